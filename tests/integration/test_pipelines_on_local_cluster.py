"""Train -> consolidate -> eval chains, atomic submission and requeue, as real jobs on the local cluster."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from hpc import ROOT

from helpers import TINY_YAML, log_text, manifest, run_cli, train_output, wait_for

pytestmark = pytest.mark.slurm

ZERO3_YAML = ROOT / "examples" / "train" / "tiny_sft_zero3.yaml"
EVAL_DATA = "build/tiny/data/tiny_eval.json"


def jobs_by_key(exp: Path) -> dict[str, dict]:
    return {job["key"]: job for job in manifest(exp)["jobs"]}


def sacct_times(job_ids: list[str]) -> dict[str, tuple[datetime, datetime]]:
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobIDRaw,Start,End", "-j", ",".join(job_ids)],
                         capture_output=True, text=True, check=True).stdout
    rows = [line.split("|") for line in out.splitlines() if line]
    return {r[0]: (datetime.fromisoformat(r[1]), datetime.fromisoformat(r[2])) for r in rows}


@pytest.fixture(scope="module")
def zero3_chain(tmp_path_factory, cluster, tiny_model):
    """One ZeRO-3 (2 processes) train -> consolidate -> eval launch, waited for."""
    tmp = tmp_path_factory.mktemp("z3")
    result = run_cli("--cluster", "local", "--experiments_dir", str(tmp / "exp"), "--train_config_path",
                     str(ZERO3_YAML), "--job_name", "z3", "--gpus_per_node", "2", "--consolidate",
                     "--eval_tasks", EVAL_DATA, "--wait",
                     env={"HPC_VENV": sys.prefix, "HPC_LAUNCH_SCRATCH": str(tmp / "scratch")})
    return result, tmp / "exp" / "z3"


def test_zero3_train_consolidate_eval_runs_in_order(zero3_chain):
    result, exp = zero3_chain
    assert result.returncode == 0, result.stdout + result.stderr + log_text(exp)
    jobs = jobs_by_key(exp)
    assert [jobs[k]["state"] for k in ("train", "consolidate", "eval")] == ["COMPLETED"] * 3
    assert jobs["consolidate"]["dependencies"] == [{"kind": "afterok", "job": "train"}]
    assert jobs["eval"]["dependencies"] == [{"kind": "afterok", "job": "consolidate"}]
    times = sacct_times([jobs[k]["job_id"] for k in ("train", "consolidate", "eval")])
    train_t, cons_t, eval_t = (times[jobs[k]["job_id"]] for k in ("train", "consolidate", "eval"))
    assert train_t[1] <= cons_t[0] and cons_t[1] <= eval_t[0]  # afterok: each starts after the one before ends
    assert "world size: 2" in log_text(exp)


def test_consolidated_safetensors_load_and_match_the_trained_weights(zero3_chain):
    _, exp = zero3_chain
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    out = train_output(exp)
    merged = Path(f"{out}-consolidated")
    newest = max(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    trained = load_file(newest / "model.safetensors")  # LF's own gathered copy of the final weights
    consolidated = load_file(merged / "model.safetensors")
    assert set(trained) == set(consolidated)
    for name, tensor in trained.items():
        assert torch.equal(tensor, consolidated[name]), name
    model = AutoModelForCausalLM.from_pretrained(merged)
    assert sum(p.numel() for p in model.parameters()) > 100_000
    assert {"config.json", "tokenizer.json", "tokenizer_config.json"} <= {p.name for p in merged.iterdir()}


def test_eval_writes_a_finite_perplexity_for_the_consolidated_model(zero3_chain):
    _, exp = zero3_chain
    results = json.loads((exp / "eval" / "results.json").read_text())
    assert results["examples"] == 8 and math.isfinite(results["perplexity"]) and results["perplexity"] > 1
    assert results["model"] == f"{train_output(exp)}-consolidated"


def test_failed_train_leaves_consolidate_and_eval_unrun(launch, tmp_path):
    result = launch("--train_config_path", str(ZERO3_YAML), "--job_name", "broken", "--template", "no_such_template",
                    "--consolidate", "--eval_tasks", EVAL_DATA, "--wait")
    exp = tmp_path / "exp" / "broken"
    assert result.returncode == 1, result
    jobs = jobs_by_key(exp)
    assert jobs["train"]["state"] == "FAILED"
    assert jobs["consolidate"]["state"] == "CANCELLED" and jobs["eval"]["state"] == "CANCELLED"
    assert jobs["consolidate"]["reason"] == "not run: train ended FAILED"
    assert jobs["eval"]["reason"] == "not run: consolidate ended CANCELLED"
    assert not Path(f"{train_output(exp)}-consolidated").exists() and not (exp / "eval" / "results.json").exists()
    assert "not run: train ended FAILED" in result.stdout


def test_a_refused_second_submission_cancels_the_first(launch, tmp_path, user_profiles):
    """Fault injection: SLURM refuses consolidate (too long for the partition): train must not stay queued."""
    user_profiles("lenient", max_time="2-00:00:00")
    result = launch("--cluster", "lenient", "--train_config_path", str(ZERO3_YAML), "--job_name", "atomic",
                    "--consolidate", "--eval_tasks", EVAL_DATA, "--consolidate_time_limit", "1-00:00:00", "--no-validate",
                    extra_env={"HPC_LAUNCH_PROFILES": str(tmp_path / "my_profiles")})
    assert result.returncode == 1
    assert "sbatch refused job 'consolidate': Batch job submission failed: Requested time limit is invalid" in result.stderr
    assert "cancelled the 1 job(s) already submitted" in result.stderr
    jobs = jobs_by_key(tmp_path / "exp" / "atomic")
    assert jobs["train"]["state"] == "CANCELLED" and jobs["train"]["job_id"]
    assert jobs["consolidate"]["state"] == "SUBMIT_FAILED" and jobs["eval"]["job_id"] is None
    queued = subprocess.run(["squeue", "-h", "-t", "PD,R,CF,CG", "-j", jobs["train"]["job_id"]],
                            capture_output=True, text=True).stdout
    assert queued.strip() == ""


def _long_run(launch, name: str, *extra: str):
    result = launch("--train_config_path", str(TINY_YAML), "--job_name", name, "--gpus_per_node", "1",
                    "--max_steps", "400", "--save_steps", "25", *extra)
    assert result.returncode == 0, result.stderr
    return jobs_by_key(launch.experiments / name)["train"]["job_id"], launch.experiments / name


def test_requeue_resumes_from_the_newest_checkpoint(launch):
    job_id, exp = _long_run(launch, "rq", "--eval_tasks", EVAL_DATA)
    out = train_output(exp)
    wait_for(lambda: (out / "checkpoint-25" / "trainer_state.json").exists(), 120, "the first checkpoint")
    # The time-limit warning, early: the trainer checkpoints at the next step and the job requeues itself.
    subprocess.run(["scancel", "--batch", "--signal=USR1", job_id], check=True)
    wait_for(lambda: "train: resuming from" in log_text(exp), 120, "the restart after SIGUSR1")
    stopped = int((exp / "state" / "train.timeout_requeues").read_text())
    assert stopped == 1
    resumed = log_text(exp).split("train: resuming from ")[1].split()[0]
    first_stop = int(resumed.rsplit("-", 1)[1])
    # Then a requeue from outside (as preemption does), once training has passed the resumed step.
    wait_for(lambda: any(int(p.name.split("-")[1]) > first_stop for p in out.glob("checkpoint-*")
                         if (p / "trainer_state.json").exists()), 120, "a checkpoint after the resume")
    subprocess.run(["scontrol", "requeue", job_id], check=True)
    status = run_cli(str(exp), "--wait", module="hpc.status")
    logs = log_text(exp)
    assert status.returncode == 0, status.stdout + logs
    assert "time limit near (SIGUSR1): saving a checkpoint and stopping" in logs
    assert f"checkpoint saved at step {first_stop}; requeueing (restart 1 of at most 3)" in logs
    assert "restart 2 of at most 3 (time-limit requeues: 1, preemptions or other requeues: 1)" in logs
    assert logs.count("train: resuming from") == 2
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 400
    jobs = jobs_by_key(exp)
    times = sacct_times([job_id, jobs["eval"]["job_id"]])
    assert jobs["eval"]["state"] == "COMPLETED" and logs.count("[hpc-launch] eval: starting") == 1
    assert times[job_id][1] <= times[jobs["eval"]["job_id"]][0]  # eval ran once, after the final train


def test_max_restarts_zero_is_honoured(launch):
    job_id, exp = _long_run(launch, "norq", "--max_restarts", "0", "--eval_tasks", EVAL_DATA)
    out = train_output(exp)
    wait_for(lambda: (out / "checkpoint-25" / "trainer_state.json").exists(), 120, "the first checkpoint")
    refused = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True)
    assert refused.returncode != 0 and "Requested operation is presently disabled" in refused.stderr
    subprocess.run(["scancel", "--batch", "--signal=USR1", job_id], check=True)
    status = run_cli(str(exp), "--wait", module="hpc.status")
    jobs = jobs_by_key(exp)
    logs = log_text(exp)
    assert status.returncode == 1
    assert jobs["train"]["state"] == "FAILED" and jobs["eval"]["state"] == "CANCELLED", logs
    assert "--max_restarts 0 is used up; launch again to resume" in logs
    assert "train: resuming from" not in logs


def test_consolidate_uploads_to_a_private_repo_without_wiping_it(zero3_chain, launch, tmp_path, user_profiles,
                                                                  fake_hub):
    _, chain_exp = zero3_chain
    user_profiles("online", internet=True)
    dotenv = tmp_path / "online.env"
    dotenv.write_text((ROOT / "dotenv" / "local.env").read_text() + f"HF_ENDPOINT={fake_hub.url}\n")
    token = "hf_fake_canary_token_123"
    secrets = tmp_path / "secrets.env"
    secrets.write_text(f"HF_TOKEN={token}\n")
    secrets.chmod(0o600)
    fake_hub.add_repo("org/tiny-merged", {"README.md": b"kept by the team\n"}, private=True)
    seeded = len(fake_hub.commits("org/tiny-merged"))
    env = {"HPC_LAUNCH_PROFILES": str(tmp_path / "my_profiles"), "DC_AGENT_SECRET_ENV": str(secrets)}
    args = ["--job_type", "consolidate", "--cluster", "online", "--dotenv", str(dotenv), "--consolidate_input",
            str(train_output(chain_exp)), "--consolidate_output_dir", str(tmp_path / "merged"),
            "--consolidate_output_repo", "org/tiny-merged", "--wait"]
    first = launch(*args, "--job_name", "up1", "--dtype", "bf16", extra_env=env)
    assert first.returncode == 0, first.stdout + log_text(tmp_path / "exp" / "up1")
    after_first = fake_hub.repo_files("org/tiny-merged")
    assert json.loads(after_first["config.json"])["dtype"] == "bfloat16"
    second = launch(*args, "--job_name", "up2", "--overwrite", "--dtype", "fp32", extra_env=env)
    assert second.returncode == 0, second.stdout + log_text(tmp_path / "exp" / "up2")
    files = fake_hub.repo_files("org/tiny-merged")
    assert files["README.md"] == b"kept by the team\n"
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= set(files)
    assert fake_hub.is_private("org/tiny-merged")
    commits = fake_hub.commits("org/tiny-merged")
    assert len(commits) == seeded + 2 and all(not c.get("deleted") for c in commits)  # one commit per upload
    assert json.loads(files["config.json"])["dtype"] == "float32"
    assert len(files["model.safetensors"]) > len(after_first["model.safetensors"])  # fp32 replaced bf16
    everything = first.stdout + first.stderr + second.stdout + second.stderr
    for exp in (tmp_path / "exp").iterdir():
        everything += "".join(p.read_text(errors="replace") for p in exp.rglob("*") if p.is_file())
    assert token not in everything
