"""After the launch, on real jobs: list, status (exit codes, pending reasons, array counts), logs (the first real
error), cancel (by id, confirmed), retry (train resumes, dependents follow), and a --wait that survives a
failing accounting query and Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hpc import ROOT

from helpers import TINY_YAML, interruptible, log_text, manifest, run_cli, train_output, wait_for

pytestmark = pytest.mark.slurm
EVAL_DATA = str(ROOT / "build" / "tiny" / "data" / "tiny_eval.json")


@pytest.fixture
def held(cluster):
    """A held job: whatever depends on it stays pending (reason Dependency) until the test ends."""
    job_id = subprocess.run(["sbatch", "--parsable", "--hold", "-A", "testacct", "-p", "cpu", "-t", "1",
                             "--wrap", "true"], capture_output=True, text=True, check=True).stdout.strip()
    yield job_id
    subprocess.run(["scancel", job_id], check=False)


def _datagen_array(tmp_path, launch, name: str, *extra: str):
    tasks = tmp_path / "tasks"
    for i in range(5):
        (tasks / f"t{i}").mkdir(parents=True, exist_ok=True)
    (tmp_path / "gen.py").write_text("import sys\nsys.exit(0)\n")
    (tmp_path / "none.yaml").write_text(yaml.safe_dump({"engine": "none", "model": "none", "chunk_size": 1}))
    return launch("--job_type", "datagen", "--datagen_config", str(tmp_path / "none.yaml"), "--no-enable_task_gen",
                  "--enable_trace_gen", "--trace_script", str(tmp_path / "gen.py"), "--trace_target_repo", "org/t",
                  "--trace_input_path", str(tasks), "--job_name", name, *extra)


def test_pending_chain_and_held_array_status_list_and_cancel(launch, tmp_path, held):
    train = launch("--train_config_path", str(TINY_YAML), "--job_name", "pend", "--eval_tasks", EVAL_DATA,
                   "--gpus_per_node", "1", "--dependency", f"afterok:{held}")
    array = _datagen_array(tmp_path, launch, "arr", "--dependency", f"afterok:{held}")
    assert train.returncode == 0 and array.returncode == 0, train.stderr + array.stderr
    pend, arr = launch.experiments / "pend", launch.experiments / "arr"

    # Once accounting lists the train, status still asks squeue why it waits (accounting keeps the reason the job had
    # when it was recorded). The scheduler gives the reason a moment after sbatch, within a full pass (at most 60 s
    # apart) when it is busy: poll for it, and show the last status if it never comes.
    train_id = manifest(pend)["jobs"][0]["job_id"]
    wait_for(lambda: subprocess.run(["sacct", "-X", "-n", "-j", train_id], capture_output=True, text=True).stdout,
             30, "accounting to list the train")
    shown: list[str] = []

    def explained() -> bool:
        shown.append(run_cli("status", str(pend)).stdout)
        return "pending: Dependency" in shown[-1]

    wait_for(explained, 90, "the train's pending reason", lambda: shown[-1])
    status = run_cli("status", str(pend))
    assert status.returncode == 3, status.stdout + status.stderr  # still running (pending)
    assert "PENDING" in status.stdout and "pending: Dependency" in status.stdout
    wait_for(lambda: json.loads(run_cli("status", str(arr), "--json").stdout)["jobs"][0]["reason"], 90,
             "the array's pending reason")
    as_json = json.loads(run_cli("status", str(arr), "--json").stdout)
    (traces,) = as_json["jobs"]
    assert as_json["exit_code"] == 3 and traces["tasks"] == {"PENDING": 5} and traces["reason"] == "pending: Dependency"

    listed = run_cli("list", "--experiments_dir", str(launch.experiments))
    assert listed.returncode == 0
    assert [line.split()[0] for line in listed.stdout.splitlines()] == ["arr", "pend"]  # newest first
    assert all(" PENDING " in line for line in listed.stdout.splitlines())

    cancelled = run_cli("cancel", str(pend))
    assert cancelled.returncode == 0, cancelled.stderr
    assert run_cli("cancel", str(arr), "traces").returncode == 0
    ids = [j["job_id"] for j in manifest(pend)["jobs"]] + [j["job_id"] for j in manifest(arr)["jobs"]]
    queued = subprocess.run(["squeue", "-h", "-j", ",".join(ids)], capture_output=True, text=True).stdout
    assert queued.strip() == ""
    assert {j["state"] for j in manifest(pend)["jobs"]} == {"CANCELLED"}
    assert manifest(pend)["jobs"][0]["reason"].startswith("cancelled by hpc-launch cancel")
    assert run_cli("status", str(pend)).returncode == 1
    assert subprocess.run(["squeue", "-h", "-j", held], capture_output=True, text=True).stdout.strip()  # not ours


def test_a_failed_job_shows_its_first_real_error(launch, tmp_path):
    result = launch("--train_config_path", str(TINY_YAML), "--job_name", "bad", "--gpus_per_node", "2",
                    "--template", "no_such_template", "--wait")
    exp = tmp_path / "exp" / "bad"
    assert result.returncode == 1, result.stdout
    first = next(line for line in result.stdout.splitlines() if line.startswith("first error: "))
    assert "no_such_template" in first and "ChildFailedError" not in first, first
    logs = run_cli("logs", str(exp))
    assert logs.returncode == 0 and first in logs.stdout and "[hpc-launch] train: error" in logs.stdout
    assert run_cli("status", str(exp)).returncode == 1


def test_wait_survives_a_failing_accounting_query_and_ctrl_c_leaves_the_jobs(launch, tmp_path, held):
    bindir = tmp_path / "flaky_bin"
    bindir.mkdir()
    count = tmp_path / "sacct_calls"
    real = subprocess.run(["which", "sacct"], capture_output=True, text=True, check=True).stdout.strip()
    (bindir / "sacct").write_text(f"""#!/bin/bash
n=$(($(cat {count} 2>/dev/null || echo 0) + 1)); echo $n > {count}
if (( n <= 3 )); then echo "sacct: error: Problem talking to the database: Connection refused" >&2; exit 1; fi
exec {real} "$@"
""")
    (bindir / "sacct").chmod(0o755)
    result = _datagen_array(tmp_path, launch, "flakywait", "--wait")
    exp = launch.experiments / "flakywait"
    assert result.returncode == 0, result.stderr  # the launch waited with the real sacct; now the flaky one:
    env = {"PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}
    status = run_cli("status", str(exp), "--wait", env=env)
    assert status.returncode == 0, status.stdout + status.stderr
    assert status.stderr.count("the jobs go on") == 3 and "Traceback" not in status.stderr

    _datagen_array(tmp_path, launch, "interrupted", "--dependency", f"afterok:{held}")
    exp = launch.experiments / "interrupted"
    waiting = tmp_path / "wait.out"
    with open(waiting, "w") as stdout:
        proc = subprocess.Popen([sys.executable, "-m", "hpc.launch", "status", str(exp), "--wait"], cwd=ROOT,
                                env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=stdout,
                                stderr=subprocess.PIPE, text=True, preexec_fn=interruptible)
    try:  # Ctrl-C once the wait is under way: it has shown the array's first state
        wait_for(lambda: "traces: PENDING" in waiting.read_text() or proc.poll() is not None, 60,
                 "the wait to show the pending array", waiting.read_text)
        assert proc.poll() is None, waiting.read_text() + proc.communicate()[1]
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert f"the jobs keep running. Follow them with: hpc-launch status {exp} --wait" in err
    job_id = manifest(exp)["jobs"][0]["job_id"]
    assert subprocess.run(["squeue", "-h", "-j", job_id], capture_output=True, text=True).stdout.strip()
    run_cli("cancel", str(exp))


@pytest.mark.ml
def test_retry_resumes_train_from_its_newest_checkpoint_and_the_eval_follows(launch, tmp_path):
    result = launch("--train_config_path", str(TINY_YAML), "--job_name", "again", "--gpus_per_node", "1",
                    "--max_steps", "300", "--save_steps", "20", "--eval_tasks", EVAL_DATA)
    assert result.returncode == 0, result.stderr
    exp = launch.experiments / "again"
    out = train_output(exp)
    wait_for(lambda: (out / "checkpoint-20" / "trainer_state.json").exists(), 180, "the first checkpoint")
    assert run_cli("cancel", str(exp)).returncode == 0
    assert {j["state"] for j in manifest(exp)["jobs"]} == {"CANCELLED"}
    retried = run_cli("retry", str(exp), "--wait")
    assert retried.returncode == 0, retried.stdout + retried.stderr + log_text(exp)
    jobs = {j["key"]: j for j in manifest(exp)["jobs"]}
    assert manifest(exp)["attempts"] == 2 and all(len(j["history"]) == 1 for j in jobs.values())
    assert jobs["eval"]["submit_argv"][2] == f"--dependency=afterok:{jobs['train']['job_id']}"
    assert "train: resuming from" in log_text(exp)
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 300
    assert Path(exp / "eval" / "results.json").exists()
    refused = run_cli("retry", str(exp), "--max_steps", "5")
    assert refused.returncode == 2 and "a retry resubmits the experiment as it was launched" in refused.stderr
