"""--validate on the local SLURM cluster: the real controller's `sbatch --test-only` refuses before anything is
written or submitted, and a good launch is validated, then submitted."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess

import pytest

from helpers import TINY_YAML, manifest

pytestmark = pytest.mark.slurm


@pytest.fixture
def sbatch_log(tmp_path) -> dict:
    """The real sbatch behind a wrapper that logs each call's arguments; returns the env that puts it first."""
    bindir, log = tmp_path / "wrapped", tmp_path / "sbatch.log"
    bindir.mkdir()
    wrapper = bindir / "sbatch"
    wrapper.write_text(f'#!/bin/sh\necho "$*" >> {log}\nexec {shutil.which("sbatch")} "$@"\n')
    wrapper.chmod(0o755)
    return {"env": {"PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}, "log": log}


def _calls(sbatch_log: dict) -> list[str]:
    log = sbatch_log["log"]
    return log.read_text().splitlines() if log.exists() else []


def _known_to_slurm(job_name: str) -> str:
    """Jobs of that name in the queue or in accounting (none, for a launch that submitted nothing)."""
    queued = subprocess.run(["squeue", "-h", "-n", job_name, "-o", "%i"], capture_output=True, text=True).stdout
    accounted = subprocess.run(["sacct", "-X", "-n", "-P", "-S", "now-1hours", "--name", job_name, "-o", "JobID"],
                               capture_output=True, text=True).stdout
    return (queued + accounted).strip()


@pytest.mark.parametrize("args, profile, reason", [
    (["--account", "nosuch"], None,
     "Invalid account or account/partition combination specified; check --account/--partition"),
    (["--qos", "nosuch"], None, "Invalid qos specification; check --qos"),
    ([], {"gpus_per_node": 8}, "Requested node configuration is not available; no node has that many GPUs"),
    (["--time_limit", "1-00:00:00"], {"max_time": "2-00:00:00"}, "Requested time limit is invalid"),
], ids=["account", "qos", "gpus", "time"])
def test_the_controller_refuses_and_nothing_is_written_or_submitted(launch, tmp_path, user_profiles, sbatch_log,
                                                                   args, profile, reason):
    name = f"refused_{secrets.token_hex(4)}"
    env = dict(sbatch_log["env"])
    if profile:  # a profile that claims more than the site allows: only the controller can tell
        user_profiles("claims", **profile)
        args = ["--cluster", "claims", *args]
        env["HPC_LAUNCH_PROFILES"] = str(tmp_path / "my_profiles")
    result = launch("--train_config_path", str(TINY_YAML), "--job_name", name, *args, extra_env=env)
    assert result.returncode == 2, result
    assert result.stdout == "" and len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith(f"hpc-launch: error: sbatch --test-only refused job 'train': {reason}"), result
    assert _calls(sbatch_log) == ["--test-only"]
    assert not (tmp_path / "exp").exists() and _known_to_slurm(name) == ""


def test_a_good_launch_is_validated_then_submitted(launch, tmp_path, sbatch_log):
    name = f"validated_{secrets.token_hex(4)}"
    result = launch("--train_config_path", str(TINY_YAML), "--job_name", name, "--gpus_per_node", "1",
                    "--eval_tasks", "build/tiny/data/tiny_eval.json", extra_env=sbatch_log["env"])
    jobs = manifest(tmp_path / "exp" / name)["jobs"] if (tmp_path / "exp" / name).exists() else []
    try:
        assert result.returncode == 0, result.stdout + result.stderr
        calls = _calls(sbatch_log)
        assert calls[:2] == ["--test-only", "--test-only"], calls  # train and eval, before any submission
        assert [c.split()[0] for c in calls[2:]] == ["--parsable", "--parsable"]
        assert "--dependency=afterok:" in calls[3] and all("--dependency" not in c for c in calls[:2])
        assert [j["job_id"] for j in jobs if j["job_id"]] and len(jobs) == 2
    finally:
        subprocess.run(["scancel", *(j["job_id"] for j in jobs if j["job_id"])], check=False)


def test_a_dry_run_here_is_validated_by_this_controller(launch, tmp_path, sbatch_log):
    bad = launch("--train_config_path", str(TINY_YAML), "--job_name", "dry_bad", "--account", "nosuch", "--dry_run",
                 extra_env=sbatch_log["env"])
    assert bad.returncode == 2 and "refused job 'train': Invalid account" in bad.stderr
    assert not (tmp_path / "exp").exists()
    good = launch("--train_config_path", str(TINY_YAML), "--job_name", "dry_good", "--dry_run",
                  extra_env=sbatch_log["env"])
    assert good.returncode == 0 and "dry run: nothing submitted" in good.stdout, good
    assert _calls(sbatch_log) == ["--test-only", "--test-only"]
    skipped = launch("--train_config_path", str(TINY_YAML), "--job_name", "dry_skip", "--dry_run", "--no-validate",
                     extra_env=sbatch_log["env"])
    assert skipped.returncode == 0 and len(_calls(sbatch_log)) == 2
