"""No secret value reaches a file or a printed line: canary values in the login environment and in the secrets file,
dry-run launches of every job type, and dotenv packs that try to pull a secret in (by key, by interpolation, by
value)."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import pytest

from hpc import ROOT
from hpc.launch import main

CANARY = "canary-" + secrets.token_hex(16)
#: Secret-looking variables a login shell may export (each holds the canary).
LOGIN_SECRETS = ("HF_TOKEN", "WANDB_API_KEY", "SUPABASE_SERVICE_ROLE_KEY", "OPENAI_API_KEY", "AWS_SECRET_ACCESS_KEY",
                 "GH_PAT", "DB_PASSWORD", "AUTH_TOKEN", "GOOGLE_APPLICATION_CREDENTIALS_JSON")


@pytest.fixture
def world(tmp_path, monkeypatch, capsys):
    """A login environment and secrets file full of canaries; launch(*args) -> (exit code, stdout + stderr)."""
    for name in LOGIN_SECRETS:
        monkeypatch.setenv(name, CANARY)
    secrets_file = tmp_path / "secrets.env"
    secrets_file.write_text("".join(f"{name}={CANARY}\n" for name in LOGIN_SECRETS))
    secrets_file.chmod(0o600)
    monkeypatch.setenv("PATH", f"{tmp_path / 'no-slurm'}{os.pathsep}/usr/bin:/bin")  # sbatch: not found
    monkeypatch.chdir(tmp_path)

    def launch(*args: str) -> tuple[int, str]:
        code = main(["--cluster", "local", "--secrets_env", str(secrets_file), "--experiments_dir",
                     str(tmp_path / "exp"), "--dry_run", "--no-validate", *args])
        out, err = capsys.readouterr()
        return code, out + err

    return launch


def _leaks(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and not p.is_symlink() and CANARY.encode() in p.read_bytes()]


def test_no_canary_in_any_file_or_line_of_dry_runs(world, tmp_path):
    (tmp_path / "ckpt" / "checkpoint-1" / "global_step1").mkdir(parents=True)
    (tmp_path / "ckpt" / "checkpoint-1" / "latest").write_text("global_step1")
    (tmp_path / "ckpt" / "checkpoint-1" / "global_step1" / "zero_pp_rank_0_mp_rank_00_model_states.pt").write_text("")
    (tmp_path / "gen.py").write_text("")
    (tmp_path / "examples" / "train").mkdir(parents=True)
    (tmp_path / "examples" / "train" / "ds_z3.json").write_text((ROOT / "examples" / "train" / "ds_z3.json").read_text())
    runs = [
        ("--train_config_path", str(ROOT / "examples" / "train" / "tiny_sft_zero3.yaml"), "--job_name", "train",
         "--consolidate", "--consolidate_output_repo", "org/m", "--eval_tasks", "t", "--gpus_per_node", "2",
         "--report_to", "wandb", "--push_to_hub", "true", "--hub_model_id", "org/m"),
        ("--job_type", "consolidate", "--consolidate_input", str(tmp_path / "ckpt"), "--job_name", "consolidate",
         "--consolidate_output_repo", "org/c"),
        ("--job_type", "datagen", "--datagen_config", "tiny_local", "--datagen_script", "gen.py", "--job_name",
         "datagen", "--enable_trace_gen", "--trace_target_repo", "org/t", "--num_chunks", "2",
         "--datagen_target_repo", "org/tasks"),
    ]
    for args in runs:
        code, printed = world(*args)
        assert code == 0, printed
        assert CANARY not in printed
    assert sorted(p.name for p in (tmp_path / "exp").iterdir()) == ["consolidate", "datagen", "train"]
    assert _leaks(tmp_path / "exp") == []
    deferred = json.loads((tmp_path / "exp" / "train" / "configs" / "deferred.json").read_text())
    assert deferred["uploads"] and deferred["wandb_runs"]  # the paths that would carry tokens were all taken


@pytest.mark.parametrize("line", [
    "HF=${HF_TOKEN}", "X=${SUPABASE_SERVICE_ROLE_KEY:-none}", "W='${WANDB_API_KEY}'", 'P="pre-${GH_PAT}-post"',
    "A=${auth_token}", f"SUPABASE_SERVICE_ROLE_KEY={CANARY}", f"MY_API_KEY={CANARY}", f"CLIENT_SECRET_VALUE={CANARY}",
    f"DATABASE_URL=postgresql://me:{CANARY}@db:5432/x", f"SSH_KEY=-----BEGIN OPENSSH PRIVATE KEY-----{CANARY}",
])
def test_a_dotenv_that_would_bring_a_secret_in_is_refused(world, tmp_path, line):
    dotenv = tmp_path / "my.env"
    dotenv.write_text((ROOT / "hpc" / "dotenv" / "local.env").read_text() + line + "\n")
    code, printed = world("--train_config_path", str(ROOT / "examples" / "train" / "tiny_sft.yaml"), "--dotenv",
                          str(dotenv))
    assert code == 2 and len(printed.strip().splitlines()) == 1 and CANARY not in printed, printed
    assert "secret" in printed or "password or key" in printed
    assert not (tmp_path / "exp").exists()


def test_names_that_only_locate_a_secret_are_fine(world, tmp_path):
    dotenv = tmp_path / "my.env"
    dotenv.write_text((ROOT / "hpc" / "dotenv" / "local.env").read_text() + "SSH_KEY=${HOME}/.ssh/id_tunnel\n"
                      "HF_TOKEN_PATH=/home/me/.hf_token\nDC_AGENT_SECRET_ENV=/home/me/secrets.env\n"
                      "TOKENIZERS_PARALLELISM=false\n")
    code, printed = world("--train_config_path", str(ROOT / "examples" / "train" / "tiny_sft.yaml"), "--dotenv",
                          str(dotenv), "--job_name", "ok")
    assert code == 0, printed
    assert _leaks(tmp_path / "exp") == []
