"""Hostile values in every user-controlled field that reaches a rendered script ("No credential in a file, no hostile
value executes"): dry runs (in-process, SLURM commands stubbed) of every job type on SLURM (profiles local, jureca,
vista, user profiles) and SkyPilot, with shell metacharacters, quote breaks, newlines, an `#SBATCH --uid=0` line,
control characters and secret-shaped values in CLI flags, train and datagen YAML, dotenv packs and profiles. Each
launch is refused (exit 2, one `hpc-launch: error:` line, nothing written) or renders scripts that pass `bash -n` and,
run by bash with every external command stubbed, exit 0 without creating the marker file. Canary secrets sit in the
login environment and the secrets file throughout: none may reach a file or the console."""

from __future__ import annotations

import json
import os
import secrets
import shlex
import subprocess
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import takewhile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpc import ROOT
from hpc.launch import main

from helpers import TRAIN_YAML, local_profile_data

CANARY = "canary-" + secrets.token_hex(16)
LOGIN_SECRETS = ("HF_TOKEN", "WANDB_API_KEY", "SUPABASE_SERVICE_ROLE_KEY", "OPENAI_API_KEY", "AWS_SECRET_ACCESS_KEY",
                 "GH_PAT", "DB_PASSWORD", "AUTH_TOKEN")
MARK = "PWNED-" + secrets.token_hex(4)  # the file every payload tries to create
TOUCH = f"touch {MARK}"
PAYLOADS = (f"$({TOUCH})", f"`{TOUCH}`", f"x; {TOUCH}", f"x | {TOUCH}", f"x && {TOUCH}", f"x' ; {TOUCH} ; '",
            f'x" ; {TOUCH} ; "', f"x\n{TOUCH}", "x\n#SBATCH --uid=0", f"x\x1b]0;$({TOUCH})\x07\x1b[2J",
            f"x\r{TOUCH}", f"x\\'$({TOUCH})\\", "hf_" + "Ab3d" * 9, "postgres://u:pa/ss@db/x")
FEW = (PAYLOADS[0], PAYLOADS[5], PAYLOADS[7], PAYLOADS[8])  # on the jureca and vista profiles
#: Commands the scripts may run, stubbed: each call is logged (argc, name, args; NUL-terminated); python prints 1.
STUBBED = ("srun", "sbatch", "scontrol", "scancel", "sacct", "squeue", "torchrun", "python", "python3", "lm_eval",
           "llamafactory-cli", "vllm", "module", "sky", "ssh", "proxychains4", "getent", "bash")
STUB = """#!/bin/sh
printf '%s\\000' "$#" "${0##*/}" "$@" >> "$STUB_LOG"
case ${0##*/} in python|python3) echo 1 ;; esac
"""
JOB_ENV = {"SLURM_JOB_ID": "7", "SLURM_JOB_NAME": "j", "SLURM_JOB_NODELIST": "n1", "SLURMD_NODENAME": "n1",
           "SLURM_ARRAY_TASK_ID": "0", "SLURM_NODEID": "0", "SKYPILOT_NODE_IPS": "127.0.0.1",
           "SKYPILOT_NODE_RANK": "0", "SKYPILOT_NUM_NODES": "1"}
ACTIVATION = '\nsource "$HPC_VENV/bin/activate"\n'  # the profiles' env_activation: trusted, skipped in the sandbox


def sbatch_options(text: str) -> list[str]:
    """The #SBATCH options sbatch reads: those before the first line that is neither blank nor a comment."""
    head = takewhile(lambda line: not line.strip() or line.startswith("#"), text.split("\n")[1:])
    return [word for line in head if line.startswith("#SBATCH") for word in line.split()[1:]]


@dataclass
class World:
    """A work directory, canary secrets, stubbed commands; launch(*args) checks one dry run and runs its scripts."""

    tmp: Path
    capsys: pytest.CaptureFixture[str]
    count: int = 0
    printed: str = ""
    profiles: Path = field(init=False)

    def __post_init__(self) -> None:
        self.profiles, self.work, self.bin = self.tmp / "profiles", self.tmp / "work", self.tmp / "bin"
        for directory in (self.profiles, self.work, self.bin, self.tmp / "home", self.tmp / "run"):
            directory.mkdir(parents=True)
        for name in STUBBED:
            (self.bin / name).write_text(STUB)
            (self.bin / name).chmod(0o755)
        self.secrets = self.tmp / "secrets.env"
        self.secrets.write_text("".join(f"{name}={CANARY}\n" for name in LOGIN_SECRETS))
        self.secrets.chmod(0o600)
        (self.work / "sft.yaml").write_text(yaml.safe_dump(TRAIN_YAML))
        (self.work / "dg.yaml").write_text((ROOT / "examples" / "datagen" / "tiny_local.yaml").read_text())
        self.named("gen", ".py")
        self.named("model", directory=True)
        self.ckpt("ckpt")

    @property
    def next_exps(self) -> Path:
        return self.tmp / f"exp{self.count + 1}"

    def unique(self, suffix: str, text: str) -> str:
        path = self.work / f"f{self.count + 1}-{suffix}"
        path.write_text(text)
        return str(path)

    def named(self, value: str, suffix: str = "", directory: bool = False) -> str | None:
        """A file (or a model directory) in the work directory named by the value; None where none can be."""
        if "/" in value or value in (".", ".."):
            return None
        path = self.work / f"{value}{suffix}"
        if directory:
            path.mkdir(exist_ok=True)
        (path / "config.json" if directory else path).write_text("{}")
        return path.name

    def ckpt(self, value: str) -> str | None:
        """A ZeRO checkpoint directory named by the value."""
        if "/" in value:
            return None
        step = self.work / value / "checkpoint-1" / "global_step1"
        step.mkdir(parents=True, exist_ok=True)
        (step.parent / "latest").write_text("global_step1")
        (step / "zero_pp_rank_0_mp_rank_00_model_states.pt").write_text("")
        return value

    def profile(self, name: str = "mine", **changes: object) -> str:
        (self.profiles / f"{name}.yaml").write_text(yaml.safe_dump(local_profile_data(name=name, **changes)))
        return f"--cluster={name}"

    def marked(self) -> list[Path]:
        return [p for p in self.tmp.rglob("*") if p.name == MARK]

    def launch(self, *args: str, cluster: str = "local", backend: str = "slurm") -> list[list[str]] | None:
        """One dry run. Refused: its one error line is checked, None. Else each script is checked and run: the
        calls of stubbed commands (argv lists) of all of them."""
        exps = self.next_exps
        self.count += 1
        where = ["--backend", "skypilot", "--gpus_per_node", "0"] if backend == "skypilot" else ["--cluster", cluster]
        argv = [*where, "--experiments_dir", str(exps), "--secrets_env", str(self.secrets), "--dry_run",
                "--no-validate", *args]
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse's own refusals
            code = exc.code
        except Exception:
            pytest.fail(f"{argv!r} raised instead of printing one error line:\n{traceback.format_exc()}")
        out, err = self.capsys.readouterr()
        self.printed = out + err
        files = [p for p in exps.rglob("*") if p.is_file()] if exps.exists() else []
        assert CANARY not in out + err, f"{argv!r} printed a canary secret"
        assert not [p for p in files if CANARY.encode() in p.read_bytes()], f"{argv!r} wrote a canary secret"
        assert not self.marked() and not (self.tmp / "launch-calls").exists(), f"{argv!r} ran something"
        if code != 0:
            lines = err.strip().splitlines()
            assert code == 2 and len(lines) == 1 and lines[0].startswith("hpc-launch: error: "), (argv, code, out, err)
            assert "Traceback" not in err and not files, f"{argv!r} was refused but wrote {files}"
            return None
        exp = next(p.parent for p in files if p.name == "manifest.json")
        (exp / "chunks").mkdir(exist_ok=True)  # hpc/jobside/datagen.py would make it
        if backend == "slurm":
            scripts = {p.name: (p.read_bytes().decode(errors="surrogateescape"), {})
                       for p in exp.glob("sbatch/*.sbatch")}  # bytes: read_text() would turn \r into \n
        else:
            tasks = {p.name: yaml.safe_load(p.read_bytes()) for p in exp.glob("sky/*.yaml")}
            scripts = {name: (task["run"], task.get("envs") or {}) for name, task in tasks.items()}
        assert scripts, f"{argv!r} succeeded without a script"
        with ThreadPoolExecutor(4) as pool:  # bash and its stubs are processes: threads overlap them
            runs = list(pool.map(lambda item: self.execute(item[0], *item[1], argv), sorted(scripts.items())))
        return [call for calls in runs for call in calls]

    def execute(self, name: str, text: str, env: dict[str, str], argv: list[str]) -> list[list[str]]:
        """The #SBATCH options, `bash -n`, then a run by bash with stubbed commands, HOME and cwd in tmp."""
        script, log = self.tmp / f"{name}.sh", self.tmp / f"{name}.calls"
        assert not [o for o in sbatch_options(text) if o.startswith("--uid")], f"{name} of {argv!r}:\n{text}"
        script.write_text(text.replace(ACTIVATION, "\n:\n"), errors="surrogateescape")
        syntax = subprocess.run(["/bin/bash", "-n", str(script)], capture_output=True, text=True)
        assert syntax.returncode == 0, f"{name} of {argv!r}: {syntax.stderr}\n{text}"
        log.write_bytes(b"")
        environ = {"PATH": f"{self.bin}:/usr/bin:/bin", "HOME": str(self.tmp / "home"), "STUB_LOG": str(log),
                   **JOB_ENV, **{key: CANARY for key in LOGIN_SECRETS}, **{k: str(v) for k, v in env.items()}}
        proc = subprocess.run(["/bin/bash", str(script)], cwd=self.tmp / "run", env=environ, capture_output=True,
                              stdin=subprocess.DEVNULL, timeout=10)
        output = (proc.stdout + proc.stderr).decode(errors="replace")
        assert not self.marked(), f"{name} of {argv!r} ran a hostile value:\n{text}"
        assert CANARY not in output, f"{name} of {argv!r} printed a canary secret"
        assert proc.returncode == 0, f"{name} of {argv!r} exited {proc.returncode}: {output[-1500:]}\n{text}"
        words = iter(log.read_bytes().decode(errors="surrogateescape").split("\0")[:-1])
        return [[next(words) for _ in range(int(argc) + 1)] for argc in words]


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> World:
    w = World(tmp_path, capsys)
    for name in LOGIN_SECRETS:
        monkeypatch.setenv(name, CANARY)
    slurm = tmp_path / "slurm-bin"  # SLURM's and SkyPilot's commands: stubs that log; a dry run calls none of them
    slurm.mkdir()
    for name in ("sbatch", "scontrol", "sacct", "squeue", "scancel", "srun", "sky"):
        (slurm / name).symlink_to(w.bin / name)
    monkeypatch.setenv("PATH", f"{slurm}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("STUB_LOG", str(tmp_path / "launch-calls"))
    monkeypatch.setenv("HPC_LAUNCH_PROFILES", str(w.profiles))
    monkeypatch.chdir(w.work)
    return w


q = shlex.quote
TRAIN = ("--train_config_path", "sft.yaml")
DATAGEN = ("--job_type", "datagen", "--datagen_config", "dg.yaml", "--datagen_script", "gen.py", "--enable_trace_gen",
           "--num_chunks", "2", "--trace_target_repo", "org/t")
EVAL = ("--job_type", "eval", "--eval_model", "model", "--eval_tasks", "t")
CONSOLIDATE = ("--job_type", "consolidate", "--consolidate_input", "ckpt")
RUN = ("--job_type", "run", "--command", "echo hi")
SERVE = ["python", "serve.py", "--model", "{model}", "--port", "{port}"]


@dataclass
class Field:
    """How a value reaches one field (None: it cannot, e.g. a file name with '/'), and the argv word a stubbed
    command must then receive (one word, unchanged)."""

    args: Callable[[World, str], list[str] | None]
    word: Callable[[str], str] | None = None


def same(v: str) -> str:
    return v


def flag(base: tuple[str, ...], name: str, word: bool = False) -> Field:
    return Field(lambda w, v: [*base, f"--{name}={v}"], same if word else None)


def made(base: tuple[str, ...], name: str, make: Callable[[World, str], str | None]) -> Callable[..., list[str] | None]:
    return lambda w, v: None if (path := make(w, v)) is None else [*base, f"--{name}={path}"]


def train_yaml(key: str) -> Field:
    return Field(lambda w, v: ["--train_config_path", w.unique("t.yaml", yaml.safe_dump({**TRAIN_YAML, key: v}))])


def dotenv(key: str) -> Field:
    """KEY="value" after the local pack (python-dotenv's double quotes take backslash escapes)."""
    def args(w: World, v: str) -> list[str]:
        text = v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
        pack = (ROOT / "hpc" / "dotenv" / "local.env").read_text() + f'{key}="{text}"\n'
        return [*TRAIN, "--dotenv", w.unique("my.env", pack)]
    return Field(args)


def datagen_yaml(config: Callable[[str], dict], word: bool = False) -> Field:
    return Field(lambda w, v: [*DATAGEN, f"--datagen_config={w.unique('dg.yaml', yaml.safe_dump(config(v)))}"],
                 same if word else None)


FIELDS: dict[str, Field] = {
    "job_name": flag(RUN, "job_name"), "partition": flag(RUN, "partition"), "account": flag(RUN, "account"),
    "qos": flag(TRAIN, "qos"), "time_limit": flag(RUN, "time_limit"), "dependency": flag(RUN, "dependency"),
    "command": flag(RUN, "command", word=True), "job_creator": flag(RUN, "job_creator"),
    "workdir": Field(made(RUN, "workdir", lambda w, v: w.named(v, directory=True))),
    "experiments_dir": Field(lambda w, v: [*TRAIN, f"--experiments_dir={w.next_exps / v}"]),
    "output_dir": flag(TRAIN, "output_dir"), "checkpoints_dir": flag(TRAIN, "checkpoints_dir"),
    "hub_model_id": Field(lambda w, v: [*TRAIN, "--push_to_hub=true", f"--hub_model_id={v}"]),
    "train_extra_args": Field(lambda w, v: [*TRAIN, f"--train_extra_args=output_dir={q(v)} run_name={q(v)}"]),
    **{f"train_yaml:{key}": train_yaml(key) for key in ("run_name", "output_dir", "dataset", "template")},
    "train_yaml:key": Field(lambda w, v: ["--train_config_path", w.unique("t.yaml", yaml.safe_dump({**TRAIN_YAML,
                                                                                                     v: 1}))]),
    "dotenv:value": dotenv("MY_SETTING"), "dotenv:CHECKPOINTS_DIR": dotenv("CHECKPOINTS_DIR"),
    "datagen_script": Field(made(DATAGEN, "datagen_script", lambda w, v: w.named(v, ".py")), lambda v: f"{v}.py"),
    "datagen_extra_args": Field(lambda w, v: [*DATAGEN, f"--datagen_extra_args=--x {q(v)}"], same),
    **{name: flag(DATAGEN, name, word=True) for name in ("datagen_model", "task_type", "trace_env")},
    **{name: flag(DATAGEN, name) for name in ("datagen_input_dir", "datagen_target_repo", "trace_target_repo")},
    "trace_agent_kwargs": Field(lambda w, v: [*DATAGEN, f"--trace_agent_kwargs={json.dumps({'k': v})}"],
                                lambda v: json.dumps({"k": v})),
    "datagen_yaml:model": datagen_yaml(lambda v: {"engine": "vllm_local", "model": v, "server": {"command": SERVE}},
                                       word=True),
    "datagen_yaml:server.command": datagen_yaml(lambda v: {"engine": "vllm_local", "model": "m",
                                                           "server": {"command": [*SERVE, "--tag", v]}}, word=True),
    "datagen_yaml:vllm_server": datagen_yaml(lambda v: {"engine": {"type": "vllm_local"}, "vllm_server": {
        "model_path": v, "custom_model_name": v, "extra_args": ["--x", v]}}),
    "eval_model": Field(made(EVAL, "eval_model", lambda w, v: w.named(v, directory=True))),
    "eval_tasks": flag(EVAL, "eval_tasks"),
    "eval_extra_args": Field(lambda w, v: [*EVAL, f"--eval_extra_args=--limit {q(v)}"], same),
    "eval_include_path": Field(made(EVAL, "eval_include_path", lambda w, v: w.named(v, directory=True))),
    "consolidate_input": Field(made(CONSOLIDATE, "consolidate_input", World.ckpt)),
    "consolidate_output_dir": flag(CONSOLIDATE, "consolidate_output_dir"),
}
#: A user profile (HPC_LAUNCH_PROFILES) with one hostile value; env_activation is trusted shell by design.
PROFILE_FIELDS: dict[str, Field] = {
    **{key: Field(lambda w, v, key=key: [*RUN, w.profile(**{key: v})])
       for key in ("partition", "account", "qos", "mem_per_node", "description", "master_addr_suffix")},
    "modules": Field(lambda w, v: [*RUN, w.profile(modules=[v])], same),
    "sbatch_extra": Field(lambda w, v: [*RUN, w.profile(slurm={"sbatch_extra": [v]})]),
    "eval_command": Field(lambda w, v: [*EVAL, w.profile(eval_command=["python", v, "{model}"])], same),
    "inference_server_command": Field(lambda w, v: [
        *DATAGEN, f"--datagen_config={w.unique('dg.yaml', 'engine: vllm_local')}", "--datagen_model=m",
        w.profile(inference_server_command=[*SERVE, v])], same),
    "name": Field(lambda w, v: None if "/" in v else [*RUN, w.profile(name=v)]),
}
SKY_FIELDS: dict[str, Field] = {
    **{name: flag(RUN, name) for name in ("remote-output-subdir", "task-name", "cluster-name", "docker-image",
                                          "local-sync-dir")},
    "region": Field(lambda w, v: [*RUN, "--cloud-provider=aws", f"--region={v}"]),
    "accelerator": Field(lambda w, v: [*RUN, "--gpus_per_node=1", f"--accelerator={v}"]),
    **{name: FIELDS[name] for name in ("command", "job_name", "workdir", "experiments_dir", "output_dir",
                                       "train_yaml:run_name", "dotenv:value", "eval_model", "eval_extra_args",
                                       "consolidate_input")},
}


def drive(world: World, fld: Field, values: tuple[str, ...], **where: str) -> None:
    for value in values:
        args = fld.args(world, value)
        calls = None if args is None else world.launch(*args, **where)
        if calls is not None and fld.word is not None:
            assert fld.word(value) in [arg for call in calls for arg in call[1:]], (args, calls)


ALL = {**FIELDS, **{f"profile:{name}": fld for name, fld in PROFILE_FIELDS.items()}, **SKY_FIELDS}
CASES = [*((name, on) for name in FIELDS for on in ("local", "jureca", "vista")),
         *((f"profile:{name}", "local") for name in PROFILE_FIELDS), *((name, "skypilot") for name in SKY_FIELDS)]


@pytest.mark.parametrize("name, on", CASES)
def test_hostile_values_are_refused_or_harmless(world: World, name: str, on: str) -> None:
    """On SLURM with the local, jureca and vista profiles (user profiles: local's data), and on SkyPilot."""
    where = {"backend": "skypilot"} if on == "skypilot" else {"cluster": on}
    drive(world, ALL[name], FEW if on in ("jureca", "vista") else PAYLOADS, **where)


FRAGMENTS = ("$(", ")", "`", ";", "|", "&&", "'", '"', "\\", "\n", "\r", "\x1b", "#SBATCH --uid=0", TOUCH, " ", "/",
             "..", "${IFS}", "-")
hostile_text = st.lists(st.sampled_from(FRAGMENTS) | st.text(st.characters(exclude_categories=("Cs",),
                                                                            exclude_characters="\x00"), max_size=3),
                        min_size=1, max_size=8).map("".join)


@pytest.mark.parametrize("name, backend", [("job_name", "slurm"), ("train_yaml:run_name", "slurm"),
                                           ("command", "slurm"), ("remote-output-subdir", "skypilot")])
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=hostile_text)
def test_arbitrary_text_is_refused_or_harmless(world: World, name: str, backend: str, value: str) -> None:
    drive(world, ALL[name], (value,), backend=backend)


JOBS = {"train": TRAIN, "datagen": DATAGEN, "consolidate": CONSOLIDATE, "eval": EVAL, "run": RUN}


@pytest.mark.parametrize("backend", ["slurm", "skypilot"])
@pytest.mark.parametrize("job", list(JOBS))
def test_canaries_reach_no_file_and_no_output(world: World, job: str, backend: str) -> None:
    """launch() checks every file and printed line for the canaries; SLURM jobs source the secrets file by path."""
    calls = world.launch(*JOBS[job], "--eval_tasks=t" if job in ("train", "consolidate") else "--job_creator=me",
                         backend=backend)
    assert (calls is None) == (backend == "skypilot" and job == "datagen")  # datagen runs on SLURM only
    scripts = list((world.tmp / f"exp{world.count}").glob("*/sbatch/*.sbatch"))
    assert (backend == "skypilot") == (not scripts) and all(f"source {world.secrets}" in p.read_text() for p in scripts)


SECRET = "pw-" + secrets.token_hex(12)  # no login variable holds it: only the rule for the field can catch it


@pytest.mark.parametrize("backend", ["slurm", "skypilot"])
@pytest.mark.parametrize("case", ["DB_URL=postgres://u:pa/{s}@h/db", "GIT_REMOTE=https://ghp_{s}@host/x.git",
                                  "MIRROR=https://{s}@host/x.git", "yaml:hub_token", "yaml:hf_hub_token",
                                  "extra:hub_token={s}", "extra:--hub_token {s}"])
def test_a_secret_in_a_dotenv_value_or_train_config_is_refused(world: World, case: str, backend: str) -> None:
    kind, _, rest = case.partition(":") if case.startswith(("yaml:", "extra:")) else ("dotenv", "", case)
    if kind == "dotenv":
        pack = (ROOT / "hpc" / "dotenv" / "local.env").read_text() + rest.format(s=SECRET) + "\n"
        args = [*TRAIN, "--dotenv", world.unique("my.env", pack)]
    elif kind == "yaml":
        args = ["--train_config_path", world.unique("t.yaml", yaml.safe_dump({**TRAIN_YAML, rest: SECRET}))]
    else:
        args = [*TRAIN, f"--train_extra_args={rest.format(s=SECRET)}"]
    assert world.launch(*args, backend=backend) is None, f"{case} was accepted"
    assert SECRET not in world.printed  # and launch() checked that nothing was written


@pytest.mark.parametrize("name", ["output_dir", "command", "train_yaml:run_name", "dotenv:value"])
def test_a_login_secret_copied_into_a_value_reaches_no_file(world: World, name: str) -> None:
    """launch() fails if the canary is written or printed: refused, or written without it, are both fine."""
    for backend in ("slurm", "skypilot"):
        world.launch(*FIELDS[name].args(world, f"echo x-{CANARY}"), backend=backend)


TACC_SECRETS = ("SUPABASE_SERVICE_ROLE_KEY", "MY_SERVICE_KEY", "PGPASSWORD", "GITHUB_PAT", "ANTHROPIC_APIKEY",
                "DB_PASS", "HF_TOKENS", "HF_TOKEN", "WANDB_API_KEY", "AWS_SECRET_ACCESS_KEY", "hf_token")
KEPT = ("TOKENIZERS_PARALLELISM", "HF_TOKEN_PATH", "DC_AGENT_SECRET_ENV", "WANDB_DIR")


@pytest.mark.parametrize("cluster", ["vista", "lonestar"])
def test_tacc_prologue_unsets_every_secret_looking_variable(world: World, cluster: str) -> None:
    """Without --export=NONE the job inherits the login environment: its prologue must drop every secret-looking
    variable (the name rule of dotenv packs) and keep the others."""
    assert world.launch(*RUN, cluster=cluster) is not None
    text = next((world.tmp / f"exp{world.count}").glob("*/sbatch/run.sbatch")).read_text()
    marker = "\n# The job's environment"
    assert marker in text and "compgen -e" in text.split(marker)[0]
    script, dump = world.tmp / "prologue.sh", world.tmp / "env.out"
    script.write_text(f"{text.split(marker)[0]}\nenv -0 > {dump}\n")
    environ = {"PATH": f"{world.bin}:/usr/bin:/bin", "HOME": str(world.tmp / "home"), "STUB_LOG": "/dev/null",
               **JOB_ENV, **{name: CANARY for name in TACC_SECRETS}, **{name: "kept" for name in KEPT}}
    proc = subprocess.run(["/bin/bash", str(script)], env=environ, capture_output=True, text=True, timeout=10)
    assert proc.returncode == 0, proc.stderr
    after = dict(item.partition("=")[::2] for item in dump.read_text().split("\0") if item)
    assert [name for name in TACC_SECRETS if name in after] == []
    assert {name: after.get(name) for name in KEPT} == {name: "kept" for name in KEPT}
    assert CANARY not in proc.stdout + proc.stderr + dump.read_text()
