"""Real jobs on the local SLURM cluster (scripts/local_slurm.sh up) running the real LLaMA-Factory payload."""

from __future__ import annotations

import hashlib
import json
import secrets
import subprocess

import pytest

from helpers import TINY_YAML, log_text, manifest, run_cli, sacct_state, train_output

pytestmark = pytest.mark.slurm


def test_tiny_train_completes_and_no_secret_leaks(launch, tmp_path):
    canary = "canary-" + secrets.token_hex(16)
    secrets_file = tmp_path / "secrets.env"
    # Sourced by the job: proves the job saw the value by writing only its hash.
    secrets_file.write_text(
        f"HPC_CANARY={canary}\n"
        'printf %s "$HPC_CANARY" | sha256sum | cut -c1-64 > "$HPC_EXPERIMENT_DIR/canary.sha256"\n'
    )
    secrets_file.chmod(0o600)
    # The login shell exports secrets too (names the dotenv rule refuses): none may reach a file, a log or the job.
    login_secrets = {name: canary for name in ("HF_TOKEN", "WANDB_API_KEY", "SUPABASE_SERVICE_ROLE_KEY", "GH_PAT")}
    result = launch("--train_config_path", str(TINY_YAML), "--job_name", "tiny", "--gpus_per_node", "2", "--wait",
                    extra_env={"DC_AGENT_SECRET_ENV": str(secrets_file), **login_secrets})
    exp = tmp_path / "exp" / "tiny"
    assert result.returncode == 0, result.stdout + result.stderr + log_text(exp)
    job = manifest(exp)["jobs"][0]
    assert job["job_id"] and job["submitted_at"] and job["state"] == "COMPLETED"
    assert sacct_state(job["job_id"]) == "COMPLETED"
    out = train_output(exp)
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 6
    assert (out / "checkpoint-6" / "model.safetensors").stat().st_size > 0
    logs = log_text(exp)
    assert "running offline" in logs and "train results:" in logs and "train results:" in result.stdout
    assert (exp / "canary.sha256").read_text().strip() == hashlib.sha256(canary.encode()).hexdigest()
    summary = json.loads((exp / "run_summary.json").read_text())
    assert summary["base_model"] == "build/tiny/model" and summary["training_type"] == "SFT"
    assert summary["weights_location"] == str(out) and summary["training_parameters"]["max_steps"] == 6
    assert summary["slurm_job_id"] == job["job_id"] and summary["training_start"] <= summary["training_end"]
    status = run_cli(str(exp), module="hpc.status")
    assert status.returncode == 0 and f"{job['job_id']}  COMPLETED" in status.stdout, status
    leaks = [p for root in (exp, out) for p in root.rglob("*") if p.is_file() and canary.encode() in p.read_bytes()]
    assert leaks == [] and canary not in result.stdout + result.stderr + status.stdout


def test_two_node_job_sees_both_nodes(launch, tmp_path):
    result = launch("--train_config_path", str(TINY_YAML), "--job_name", "twonode", "--num_nodes", "2",
                    "--gpus_per_node", "1", "--max_steps", "2", "--save_steps", "2", "--wait")
    exp = tmp_path / "exp" / "twonode"
    logs = log_text(exp)
    assert result.returncode == 0, result.stdout + result.stderr + logs
    assert "node gpu1 (node rank 0) starts torchrun" in logs
    assert "node gpu2 (node rank 1) starts torchrun" in logs
    assert "world size: 2" in logs
    assert json.loads((train_output(exp) / "trainer_state.json").read_text())["global_step"] == 2


def test_too_long_time_is_refused_by_the_profile(launch, tmp_path):
    result = launch("--train_config_path", str(TINY_YAML), "--job_name", "toolong", "--time_limit", "13:00:00")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "hpc-launch: error: --time_limit 13:00:00 exceeds the 12:00:00 limit of partition gpu on local; "
        "ask for --time_limit 12:00:00 or less (jobs can requeue and resume)"
    )
    assert not (tmp_path / "exp").exists()


def test_too_long_time_is_refused_by_slurm_with_its_reason(launch, tmp_path, user_profiles):
    """A profile that claims more than the partition allows: SLURM's own refusal reaches the user."""
    user_profiles("lenient", max_time="2-00:00:00")
    result = launch("--cluster", "lenient", "--train_config_path", str(TINY_YAML), "--job_name", "slurmsaysno",
                    "--time_limit", "1-00:00:00", "--no-validate",
                    extra_env={"HPC_LAUNCH_PROFILES": str(tmp_path / "my_profiles")})
    assert result.returncode == 1, result
    assert "sbatch refused job 'train': Batch job submission failed: Requested time limit is invalid" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    job = manifest(tmp_path / "exp" / "slurmsaysno")["jobs"][0]
    assert job["state"] == "SUBMIT_FAILED" and job["job_id"] is None


def test_bad_account_is_refused_by_slurm(launch, tmp_path):
    result = launch("--train_config_path", str(TINY_YAML), "--job_name", "badacct", "--account", "nosuchacct",
                    "--no-validate")
    assert result.returncode == 1
    assert "Invalid account or account/partition combination specified" in result.stderr


def test_dependency_holds_the_job(launch, tmp_path):
    held = subprocess.run(["sbatch", "--parsable", "--hold", "-p", "cpu", "--wrap", "true"],
                          capture_output=True, text=True, check=True).stdout.strip()
    job_id = None
    try:
        result = launch("--train_config_path", str(TINY_YAML), "--job_name", "waits", "--dependency", held)
        assert result.returncode == 0, result.stderr
        job_id = manifest(tmp_path / "exp" / "waits")["jobs"][0]["job_id"]
        info = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T|%r|%E"], capture_output=True, text=True).stdout
        assert info.strip() == f"PENDING|Dependency|afterok:{held}(unfulfilled)"
    finally:
        subprocess.run(["scancel", held, *([job_id] if job_id else [])], check=False)
