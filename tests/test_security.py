"""The holes found from outside (issue 18), each closed: secrets after interpolation, one name rule for Python and the
job scripts, quoting in SkyPilot tasks, locks, readers for every file, placeholders, cache entries, numbers, Hub ids,
control characters and the exit code of a failed submission."""

from __future__ import annotations

import errno
import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from hpc import ROOT
from hpc.launch import main
from hpc.errors import LaunchError
from hpc.secret_rule import FIX, check_config, check_output, login_secrets, secret_name, value_problem

from helpers import TRAIN_YAML, run_cli

#: Names a login shell may hold; True: a secret (each unset by a TACC job, refused in a dotenv pack).
NAMES = {"SUPABASE_SERVICE_ROLE_KEY": True, "MY_SERVICE_KEY": True, "PGPASSWORD": True, "GITHUB_PAT": True,
         "ANTHROPIC_APIKEY": True, "DB_PASS": True, "HF_TOKENS": True, "API_KEYS": True, "GPG_PASSPHRASE": True,
         "HF_TOKEN": True, "AWS_SECRET_ACCESS_KEY": True, "SESSION_COOKIE": True, "AUTH": True, "MY_CREDS": True,
         "GOOGLE_APPLICATION_CREDENTIALS": True, "hf_token": True,
         "TOKENIZERS_PARALLELISM": False, "DC_AGENT_SECRET_ENV": False, "SSH_KEY_PATH": False, "SSH_KEY": False,
         "KEYRING_BACKEND": False, "AUTHOR": False, "PATCH": False, "HF_HOME": False, "TOKEN_FILE": False,
         "PASSWORD_STORE_DIR": False, "COMPASS": False}


@pytest.fixture
def launch(tmp_path, recording_slurm, capsys):
    """launch(*args) -> (exit code, stdout, stderr) of a dry run on the local profile; SLURM's commands only record
    that they ran (tmp_path/calls.log)."""

    def run(*args: str, dry: bool = True) -> tuple[int, str, str]:
        code = main(["--cluster", "local", "--experiments_dir", str(tmp_path / "exp"), "--no-validate",
                     *(["--dry_run"] if dry else []), *args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def _refused(result: tuple[int, str, str], tmp_path: Path) -> str:
    code, out, err = result
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("hpc-launch: error: "), (code, out, err)
    assert not (tmp_path / "exp").exists() and not (tmp_path / "calls.log").exists()
    return lines[0]


def _train(tmp_path: Path, **changes: object) -> str:
    path = tmp_path / "sft.yaml"
    path.write_text(yaml.safe_dump({**TRAIN_YAML, **changes}))
    return str(path)


@pytest.mark.parametrize("name, secret", sorted(NAMES.items()))
def test_one_name_rule(name, secret):
    assert secret_name(name) is secret


def test_tacc_jobs_unset_exactly_what_the_rule_calls_secret(launch, tmp_path):
    """The prologue a vista (TACC) job runs, executed with every name set: what survives is what the rule allows."""
    code, _, err = launch("--cluster", "vista", "--train_config_path", _train(tmp_path))
    assert code == 0, err
    script = next((tmp_path / "exp").glob("*/sbatch/*.sbatch")).read_text()
    start, end = script.index("secret_name="), script.index("unset secret_name location")
    names = [n for n in NAMES if n.isupper()]
    env = {"PATH": "/usr/bin:/bin", **{n: "value" for n in names}}
    shown = subprocess.run(["bash", "-c", script[start:end] + "unset secret_name location\ncompgen -e\n"], env=env,
                           capture_output=True, text=True, check=True).stdout.split()
    assert sorted(n for n in names if n in shown) == sorted(n for n in names if not NAMES[n])


@pytest.mark.parametrize("line, login", [
    ("DATABASE_URL=${DATABASE_URL}", {"DATABASE_URL": "postgres://u:PW@h/db"}),
    ("DB_URL=postgres://u:pa/ss@h", {}),
    ("GIT_REMOTE=https://ghp_TOKEN@host/x.git", {}),
    ("JUMP=ssh://me:hunter22@login.site:22", {}),
    ("STORE=${STORE_FROM_LOGIN}", {"STORE_FROM_LOGIN": "s3cret-from-login", "MY_TOKEN": "s3cret-from-login"}),
    ("MATERIAL=-----BEGIN OPENSSH PRIVATE KEY-----", {}),
    ("HUB=hf_abcdefghijklmnopqrstuvwxyz0123456789", {}),
])
def test_a_dotenv_value_is_checked_as_jobs_would_see_it(launch, tmp_path, monkeypatch, line, login):
    for name, value in login.items():
        monkeypatch.setenv(name, value)
    (tmp_path / "my.env").write_text(line + "\n")
    error = _refused(launch("--train_config_path", _train(tmp_path), "--dotenv", str(tmp_path / "my.env")), tmp_path)
    key = line.partition("=")[0]
    assert f"the value of {key} holds" in error and "secrets file ($DC_AGENT_SECRET_ENV)" in error
    assert "PW" not in error and "s3cret" not in error and "ghp_TOKEN" not in error


@pytest.mark.parametrize("value", ["http://mirror:8080/models/m@v2", "https://host/path@v1", "git@github.com:o/r.git",
                                   "http://[::1]:8080/m@v2", "http://[fe80::1]/models/m@v2", "ssh://root@127.0.0.1:2222",
                                   "git+ssh://git@host/o/r.git",
                                   "/scratch/me@work", "${HOME}/x"])
def test_values_that_only_look_alike_pass(value):
    assert value_problem(value, {}) is None


@pytest.mark.parametrize("where, args", [
    ("train config", {"hub_token": "hf_x"}),
    ("train config", {"hf_hub_token": "abc"}),
    ("train options", ["--train_extra_args", "hub_token=abc"]),
    ("train options", ["--train_extra_args", "--hub_token abc"]),
    ("train config", {"model_name_or_path": "https://user:pw@example.org/m"}),
])
def test_a_token_in_the_train_config_is_refused(launch, tmp_path, where, args):
    extra = args if isinstance(args, list) else []
    changes = args if isinstance(args, dict) else {}
    error = _refused(launch("--train_config_path", _train(tmp_path, **changes), *extra), tmp_path)
    assert where in error and ("looks like a secret" in error or "holds a password" in error)


def test_vocabulary_tokens_and_counts_are_not_secrets(launch, tmp_path):
    code, _, err = launch("--train_config_path", _train(tmp_path, add_special_tokens="<a>,<b>"),
                          "--train_extra_args", "max_new_tokens=512")
    assert code == 0, err


def test_a_secret_in_a_list_of_the_train_config_is_refused_and_named_by_its_index(launch, tmp_path):
    train = _train(tmp_path, report_to=["none", "https://user:pw@example.org/x"])
    error = _refused(launch("--train_config_path", train), tmp_path)
    assert "the value of report_to[1] holds a password or token in a URL" in error and "pw@" not in error
    error = _refused(launch("--train_config_path", _train(tmp_path, callbacks=[{"x": 1}, {"api_key": "k"}])), tmp_path)
    assert "callbacks[1].api_key looks like a secret" in error


def _config_error(config: object, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(LaunchError) as err:
        check_config("datagen config d.yaml", config, environ or {})
    return str(err.value)


@pytest.mark.parametrize("config, message", [
    ({"hub": {"token": "abc"}}, "hub.token looks like a secret; " + FIX + " (jobs read it from the environment)"),
    ({"servers": [{"env": {"x": 1}}, {"env": {"API_KEY": "abc"}}]}, "servers[1].env.API_KEY looks like a secret"),
    ({"servers": [{"args": ["--m", "hf_abcdefghijklmnopqrstuvwxyz0123456789"]}]},
     "the value of servers[0].args[1] holds an access token; " + FIX),
    ({"a": {"b": [["-----BEGIN RSA PRIVATE KEY-----"]]}}, "the value of a.b[0][0] holds a private key (a PEM block)"),
    ("https://u:pw@example.org", "the value of the config holds a password or token in a URL"),
    (["ok", "ghp_abcdefghijklmnopqrstuvwxyz0123456789"], "the value of [1] holds an access token"),
])
def test_check_config_names_where_the_secret_is_in_nested_mappings_and_lists(config, message):
    assert _config_error(config).startswith(f"datagen config d.yaml: {message}")


def test_a_login_secret_of_exactly_the_minimum_length_is_looked_for():
    assert login_secrets({"MY_TOKEN": "12345678", "HF_TOKEN": "1234567", "HOME": "/home/someone"}) == {
        "MY_TOKEN": "12345678"}
    assert _config_error({"note": "x-12345678"}, {"MY_TOKEN": "12345678"}) == (
        f"datagen config d.yaml: the value of note holds the value of your login variable MY_TOKEN; {FIX}")
    check_config("c", {"note": "x-1234567"}, {"MY_TOKEN": "1234567"})  # shorter: would match by chance


def test_a_password_with_colons_before_a_slash_is_still_a_url_credential():
    """Only the part after the first ':' of the userinfo decides: 'pa:55/ss' is a password, not a port 55."""
    assert value_problem("postgres://me:pa:55/ss@db/x", {}) == "a password or token in a URL (user:password@ or token@)"


def test_a_profile_value_with_a_credential_is_refused(launch, tmp_path, user_profiles):
    user_profiles("leaky", env_activation="source https://u:pw@example.org/env.sh")
    error = _refused(launch("--cluster", "leaky", "--train_config_path", _train(tmp_path)), tmp_path)
    assert "leaky.yaml: the value of env_activation holds a password or token in a URL" in error


def test_a_login_secret_that_reaches_a_file_by_any_other_path_stops_the_launch(launch, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "jobname-secret-1234")
    error = _refused(launch("--train_config_path", _train(tmp_path), "--job_name", "jobname-secret-1234"), tmp_path)
    assert "would contain the value of your login variable HF_TOKEN" in error and "1234" not in error
    with pytest.raises(Exception, match="login variable HF_TOKEN"):
        check_output("f", "x jobname-secret-1234 y")


def test_skypilot_output_subdir_is_quoted(tmp_path):
    exp = tmp_path / "exp"
    canary = tmp_path / "PWNED"
    for subdir in (f"v$(touch {canary})", f"v`touch {canary}`", f'v";touch {canary};"', f"v'; touch {canary}; '"):
        result = run_cli("--backend", "skypilot", "--experiments_dir", str(exp), "--job_name", "s", "--dry_run",
                         "--no-validate", "--job_type", "run", "--command", "true", "--workdir", str(tmp_path),
                         "--remote-output-subdir", subdir)
        assert result.returncode == 0, result.stderr
        run = yaml.safe_load((exp / "s" / "sky" / "run.yaml").read_text())["run"]
        shown = subprocess.run(["bash", "-c", run + 'echo "$HPC_OUTPUT_DIR"'], env={"HOME": str(tmp_path / "h"),
                               "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, cwd=tmp_path)
        assert shown.returncode == 0, shown.stderr
        assert shown.stdout.strip() == f"{tmp_path}/h/sky_workdir/{subdir}" and not canary.exists()


def test_a_planted_lock_link_is_not_followed(launch, tmp_path):
    (tmp_path / "exp").mkdir()
    victim = tmp_path / "victim"
    (tmp_path / "exp" / ".golden.lock").symlink_to(victim)
    code, _, err = launch("--train_config_path", _train(tmp_path), "--job_name", "golden")
    assert code == 2 and "lock file" in err and "symbolic link" in err
    assert not victim.exists() and sorted(p.name for p in (tmp_path / "exp").iterdir()) == [".golden.lock"]


@pytest.mark.parametrize("content, expected", [
    (b"name: \xff\n", "is not UTF-8 text"),
    (b"name: a\nname: b\nrun: x\n", "found duplicate key 'name'"),
    (b"a: &a [1,1,1,1,1,1,1,1,1,1]\n" + b"".join(b"%c: &%c [*%c,*%c,*%c,*%c,*%c,*%c,*%c,*%c,*%c,*%c]\n" % ((c, c) + (c - 1,) * 10)
                                                for c in range(ord("b"), ord("k"))), "aliases expand to more than"),
    (b"run: x\nresources: {cpus: .nan}\n", "which is not a usable number"),
])
def test_a_task_file_goes_through_the_reader(tmp_path, content, expected):
    task = tmp_path / "task.yaml"
    task.write_bytes(content)
    result = run_cli("--backend", "skypilot", "--task", str(task), "--experiments_dir", str(tmp_path / "exp"),
                     "--dry_run", "--no-validate", timeout=60)
    assert result.returncode == 2 and expected in result.stderr and len(result.stderr.splitlines()) == 1, result.stderr


def test_a_huge_task_file_is_not_read(tmp_path):
    task = tmp_path / "task.yaml"
    with open(task, "wb") as out:
        out.truncate(30 * 1024 * 1024)
    result = run_cli("--backend", "skypilot", "--task", str(task), "--experiments_dir", str(tmp_path / "exp"),
                     "--dry_run", "--no-validate", timeout=60)
    assert result.returncode == 2 and "has 31,457,280 bytes, more than the 1,048,576" in result.stderr


@pytest.mark.parametrize("flag", ["--train_config_path", "--dotenv", "--datagen_config"])
def test_a_fifo_never_hangs_the_launcher(tmp_path, flag):
    fifo = tmp_path / "input"
    os.mkfifo(fifo)
    (tmp_path / "gen.py").write_text("")
    args = {"--train_config_path": ["--train_config_path", str(fifo)],
            "--dotenv": ["--train_config_path", _train(tmp_path), "--dotenv", str(fifo)],
            "--datagen_config": ["--job_type", "datagen", "--datagen_config", str(fifo), "--datagen_script", "gen.py"]}
    result = run_cli("--cluster", "local", "--experiments_dir", str(tmp_path / "exp"), "--dry_run", "--no-validate",
                     *args[flag], cwd=tmp_path, timeout=60)
    assert result.returncode == 2 and f"{fifo} is a pipe, not a regular file" in result.stderr, result.stderr


def test_a_bad_eval_placeholder_is_one_line(launch, tmp_path, user_profiles):
    user_profiles("mine", eval_command=["run", "{model.foo}"])
    error = _refused(launch("--cluster", "mine", "--job_type", "eval", "--eval_model", "org/m", "--eval_tasks", "t"),
                     tmp_path)
    assert "eval_command has a bad placeholder ({model.foo})" in error


def test_an_edited_cache_entry_is_a_miss(tmp_path, monkeypatch):
    from hpc.envfiles import read_dotenv

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    pack = tmp_path / "c.env"
    pack.write_text("X=1\n")
    assert read_dotenv(pack) == {"X": "1"}
    (entry,) = (tmp_path / "cache" / "hpc-launch" / "dotenv").iterdir()
    cached = json.loads(entry.read_text())
    cached["values"] = {"X=1;touch /tmp/pwned;Y": "v"}
    entry.write_text(json.dumps(cached))
    assert read_dotenv(pack) == {"X": "1"}


def test_a_secrets_file_nobody_can_read_is_refused(launch, tmp_path):
    secrets_file = tmp_path / "secrets.env"
    secrets_file.write_text("HF_TOKEN=x\n")
    secrets_file.chmod(0)
    error = _refused(launch("--train_config_path", _train(tmp_path), "--secrets_env", str(secrets_file)), tmp_path)
    assert "is not readable by you (mode ----------); run: chmod 600" in error


@pytest.mark.parametrize("kwargs, expected", [
    ('{"temperature": NaN}', "NaN is not JSON"), ('{"t": Infinity}', "Infinity is not JSON"),
    ('{"a": 1, "a": 2}', "duplicate key 'a'"), ('{"api_key": "abc"}', "api_key looks like a secret"),
])
def test_trace_agent_kwargs_are_strict(launch, tmp_path, kwargs, expected):
    (tmp_path / "gen.py").write_text("")
    error = _refused(launch("--job_type", "datagen", "--datagen_config", "tiny_local", "--datagen_script", "gen.py",
                            "--enable_trace_gen", "--trace_target_repo", "org/t", "--trace_agent_kwargs", kwargs),
                     tmp_path)
    assert expected in error


@pytest.mark.parametrize("args, expected", [
    (["--learning_rate", "nan"], "invalid finite number value: 'nan'"),
    (["--learning_rate", "inf"], "invalid finite number value: 'inf'"),
])
def test_nan_and_infinity_flags_are_refused(launch, tmp_path, args, expected):
    with pytest.raises(SystemExit) as exit_:
        launch("--train_config_path", _train(tmp_path), *args)
    assert exit_.value.code == 2


def test_nan_in_the_train_yaml_is_refused(launch, tmp_path):
    path = tmp_path / "sft.yaml"
    path.write_text(yaml.safe_dump(TRAIN_YAML) + "warmup_ratio: .nan\n")
    assert "which is not a usable number" in _refused(launch("--train_config_path", str(path)), tmp_path)


@pytest.mark.parametrize("repo", ["org/..", "org/.", "../x", "org/a..b", "org/-x", "org/x.", "o--o/x"])
def test_hub_ids_refuse_dot_parts(launch, tmp_path, repo):
    (tmp_path / "ckpt" / "global_step1").mkdir(parents=True)
    (tmp_path / "ckpt" / "latest").write_text("global_step1")
    (tmp_path / "ckpt" / "global_step1" / "zero_pp_rank_0_mp_rank_00_model_states.pt").write_text("")
    error = _refused(launch("--job_type", "consolidate", "--consolidate_input", str(tmp_path / "ckpt"),
                            "--consolidate_output_repo", repo), tmp_path)
    assert "is not a Hugging Face repo id" in error


def test_control_characters_are_escaped_in_errors_and_previews(launch, tmp_path):
    code, out, err = launch("--train_config_path", _train(tmp_path), "--job_name", "a\x1b[31mred")
    assert code == 2 and "\x1b" not in err and "\\x1b[31mred" in err
    code, out, err = launch("--job_type", "run", "--command", "echo x\x1b]0;title\x07y")
    assert code == 0, err
    assert "\x1b" not in out and "\x07" not in out and "\\x1b]0;title\\x07y" in out


def test_a_disk_that_fills_after_the_first_sbatch_exits_1_and_cancels(launch, tmp_path, monkeypatch):
    from hpc import manifest

    real, writes = manifest.write_atomic, []

    def write(path: Path, text: str) -> None:
        writes.append(text)
        if any('"job_id": "1"' in w for w in writes):  # after the first sbatch answered
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(path, text)

    monkeypatch.setattr(manifest, "write_atomic", write)
    code, _, err = launch("--train_config_path", _train(tmp_path), "--deepspeed", str(ROOT / "examples" / "train" /
                          "ds_z3.json"), "--consolidate", dry=False)
    assert code == 1, err
    calls = (tmp_path / "calls.log").read_text().splitlines()
    assert "No space left on device" in err and "cancelled the 1 job(s) already submitted" in err, err
    assert [c.split()[0] for c in calls].count("sbatch") == 1 and "scancel 1" in calls
