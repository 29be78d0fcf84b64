"""Submission as a transaction under faults, on the real cluster: a hung sbatch, a refusal at job k, an answer
without a job id, SIGTERM or SIGINT mid-submission, a disk that fills after the first sbatch, two launches with
the same name at once. After each: one line, and no job of the launch left queued that its manifest does not
record as such."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from hpc import ROOT

from helpers import TINY_YAML, manifest, run_cli, sacct_state, wait_for

pytestmark = pytest.mark.slurm
EVAL_DATA = str(ROOT / "build" / "tiny" / "data" / "tiny_eval.json")
REAL_SBATCH = shutil.which("sbatch")


def _wrapper(tmp_path: Path, on_call: int, action: str) -> dict[str, str]:
    """An sbatch first on PATH that passes calls through, and on call `on_call` (--test-only calls not counted)
    does `action` instead: hang (after the job was queued), fail, noid (queue it, print nothing), fill (queue it,
    then fill the disk of $FILL_DIR), slow (queue it, then sleep so a signal can arrive)."""
    bindir = tmp_path / "faultbin"
    bindir.mkdir(exist_ok=True)
    count = tmp_path / "sbatch_calls"
    (bindir / "sbatch").write_text(f"""#!/bin/bash
for a in "$@"; do [[ $a == --test-only ]] && exec {REAL_SBATCH} "$@"; done
n=$(($(cat {count} 2>/dev/null || echo 0) + 1)); echo $n > {count}
if (( n != {on_call} )); then exec {REAL_SBATCH} "$@"; fi
case {action} in
  fail) echo "sbatch: error: injected failure" >&2; exit 1 ;;
  hang) {REAL_SBATCH} "$@" > /dev/null; exec sleep 600 ;;
  noid) {REAL_SBATCH} "$@" > /dev/null; exit 0 ;;
  fill) out=$({REAL_SBATCH} "$@"); dd if=/dev/zero of="$FILL_DIR/filler" bs=64k 2>/dev/null; echo "$out" ;;
  slow) out=$({REAL_SBATCH} "$@"); echo "$out"; exec sleep 30 ;;
esac
""")
    (bindir / "sbatch").chmod(0o755)
    return {"PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}", "HPC_LAUNCH_SLURM_TIMEOUT": "8"}


def _tagged(token: str) -> list[str]:
    out = subprocess.run(["squeue", "-h", "--me", "-t", "PD,R,CF,S", "-o", "%i|%k"], capture_output=True,
                         text=True).stdout
    return [line.split("|")[0] for line in out.splitlines() if "|" in line and line.split("|", 1)[1].startswith(token)]


def _chain(launch, name: str, env: dict[str, str]):
    return launch("--train_config_path", str(TINY_YAML), "--job_name", name, "--gpus_per_node", "1",
                  "--max_steps", "2", "--eval_tasks", EVAL_DATA, extra_env=env)


@pytest.mark.parametrize("action, call, message", [
    ("fail", 2, "sbatch refused job 'eval': injected failure"),
    ("hang", 2, "did not answer within 8 s"),
    ("noid", 1, "sbatch answered job 'train' without a job id"),
])
def test_a_failed_submission_leaves_no_job_behind(launch, tmp_path, action, call, message):
    result = _chain(launch, f"fault_{action}", _wrapper(tmp_path, call, action))
    exp = launch.experiments / f"fault_{action}"
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    record = manifest(exp)
    assert record["token"] and _tagged(record["token"]) == []  # the one whose answer was lost too
    states = {j["key"]: j["state"] for j in record["jobs"]}
    assert states["train" if call == 1 else "eval"] == "SUBMIT_FAILED"
    assert all(s in ("CANCELLED", "SUBMIT_FAILED", "PLANNED") for s in states.values()), states
    if call == 2:
        assert "cancelled the" in result.stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_submission_rolls_back(launch, tmp_path, signum):
    """The signal arrives once the first job is queued (its tag is in squeue) while its sbatch has not answered: that
    job, known only by its tag, is cancelled, and the manifest records the interrupted submission."""
    # The slow sbatch answers after 30 s; the launcher waits up to 25 s, time enough to see the job queued.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HPC_VENV": sys.prefix, **_wrapper(tmp_path, 1, "slow"),
           "HPC_LAUNCH_SLURM_TIMEOUT": "25"}
    name = f"sig{int(signum)}_{uuid.uuid4().hex[:8]}"
    exp = launch.experiments / name
    proc = subprocess.Popen([sys.executable, "-m", "hpc.launch", "--cluster", "local", "--experiments_dir",
                             str(launch.experiments), "--train_config_path", str(TINY_YAML), "--job_name", name,
                             "--gpus_per_node", "1", "--eval_tasks", EVAL_DATA],
                            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def submitting() -> bool:  # the intent is written (with the launch's token) before sbatch is asked
            try:
                return manifest(exp)["jobs"][0]["state"] == "SUBMITTING"
            except (OSError, ValueError, KeyError, IndexError):
                return False

        wait_for(lambda: submitting() or proc.poll() is not None, 120, "the first sbatch")
        assert proc.poll() is None, proc.communicate()
        token = manifest(exp)["token"]
        queued: list[str] = []

        def in_queue() -> bool:
            queued[:] = _tagged(token)
            return bool(queued)

        wait_for(in_queue, 20, "the first job in squeue")
        assert proc.poll() is None, "the launcher ended before the signal"
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signum, err
    assert f"interrupted by {signal.Signals(signum).name} while submitting" in err and "Traceback" not in err
    assert "cancelled the 1 job(s) already submitted" in err and len(err.strip().splitlines()) == 1, err
    record = manifest(exp)
    assert _tagged(record["token"]) == []
    wait_for(lambda: sacct_state(queued[0]).startswith("CANCELLED"), 30, f"job {queued[0]} CANCELLED in accounting",
             lambda: sacct_state(queued[0]))
    jobs = {j["key"]: j for j in record["jobs"]}
    assert jobs["train"]["state"] == "SUBMIT_FAILED" and jobs["train"]["job_id"] is None  # its answer never came
    assert jobs["train"]["error"] == f"interrupted by {signal.Signals(signum).name} while submitting"
    assert jobs["eval"]["state"] == "PLANNED" and jobs["eval"]["job_id"] is None


def test_a_disk_that_fills_after_the_first_sbatch(launch, tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(small)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        env = {**_wrapper(tmp_path, 1, "fill"), "FILL_DIR": str(small)}
        result = run_cli("--cluster", "local", "--experiments_dir", str(small / "exp"), "--train_config_path",
                         str(TINY_YAML), "--job_name", "full", "--gpus_per_node", "1", "--eval_tasks", EVAL_DATA,
                         env={**env, "HPC_VENV": sys.prefix})
        assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "No space left on device" in result.stderr
        assert "cancelled the 1 job(s) already submitted" in result.stderr
        record = manifest(small / "exp" / "full")  # the intent, written before the disk filled
        assert record["jobs"][0]["state"] == "SUBMITTING" and _tagged(record["token"]) == []
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


def test_two_launches_with_the_same_name_at_once(launch, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HPC_VENV": sys.prefix}
    name = f"twin_{uuid.uuid4().hex[:8]}"  # squeue is asked by name: no other test's or run's jobs
    argv = [sys.executable, "-m", "hpc.launch", "--cluster", "local", "--experiments_dir", str(launch.experiments),
            "--train_config_path", str(TINY_YAML), "--job_name", name, "--gpus_per_node", "1", "--max_steps", "2"]
    procs = [subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    assert sorted(code for code, _ in results) == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    assert "experiment directory" in loser and "--job_name" in loser and len(loser.strip().splitlines()) == 1
    record = manifest(launch.experiments / name)
    ids = [j["job_id"] for j in record["jobs"]]
    queued = subprocess.run(["squeue", "-h", "--me", "-n", name, "-o", "%i"], capture_output=True, text=True).stdout
    assert set(queued.split()) <= set(ids)  # the loser queued nothing
    subprocess.run(["scancel", *ids], check=False)
