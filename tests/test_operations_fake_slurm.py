"""Submission, status, cancel, retry and --wait run in-process against a fake SLURM (tests/fakeslurm.py): what the
launcher asked SLURM, what it recorded in the manifest and how it exited. No cluster needed."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import yaml

from hpc import status
from hpc.backends.slurm import show_config
from hpc.launch import main

from fakeslurm import FakeSlurm
from helpers import TRAIN_YAML


@pytest.fixture
def slurm(tmp_path, monkeypatch) -> FakeSlurm:
    """A fake SLURM first on PATH, the working directory the test's, and the Backend's waits instant."""
    fake = FakeSlurm(tmp_path / "fakeslurm").install(monkeypatch)
    monkeypatch.chdir(tmp_path)
    show_config.cache_clear()  # asked once per process: this test's scontrol must answer
    clock = [0.0]

    class Instant:  # hpc.backends.slurm's `time`: Backend.cancel's 15 s of polling pass in a few looks
        @staticmethod
        def monotonic() -> float:
            return clock[0]

        @staticmethod
        def sleep(seconds: float) -> None:
            clock[0] += max(seconds, 4.0)

    monkeypatch.setattr("hpc.backends.slurm.time", Instant)
    yield fake
    show_config.cache_clear()


def _launch(tmp_path: Path, capsys, *args: str) -> tuple[int, str, str]:
    code = main(["--cluster", "local", "--experiments_dir", str(tmp_path / "exp"), "--no-validate", *args])
    out, err = capsys.readouterr()
    return code, out, err


def _verb(capsys, *args: str) -> tuple[int, str, str]:
    code = main([*args])
    out, err = capsys.readouterr()
    return code, out, err


def _manifest(exp: Path) -> dict:
    return json.loads((exp / "manifest.json").read_text())


def _jobs(exp: Path) -> dict[str, dict]:
    return {j["key"]: j for j in _manifest(exp)["jobs"]}


@pytest.fixture
def chain(tmp_path, slurm, capsys) -> Path:
    """A submitted train -> consolidate -> eval chain (job ids 100, 101, 102)."""
    (tmp_path / "sft.yaml").write_text(yaml.safe_dump(TRAIN_YAML))
    (tmp_path / "ds_z3.json").write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    (tmp_path / "heldout.json").write_text("[]\n")
    code, out, err = _launch(tmp_path, capsys, "--train_config_path", "sft.yaml", "--deepspeed", "ds_z3.json",
                             "--gpus_per_node", "2", "--consolidate", "--eval_tasks", "heldout.json",
                             "--job_name", "chain")
    assert code == 0, err
    exp = tmp_path / "exp" / "chain"
    assert {k: j["job_id"] for k, j in _jobs(exp).items()} == {"train": "100", "consolidate": "101", "eval": "102"}
    return exp


# --- submission as a transaction (hpc/backends/slurm/submit.py) ------------------------------------------------


@pytest.mark.parametrize("fault", ["fail", "noid"])
def test_a_failed_sbatch_cancels_what_the_launch_queued_and_the_manifest_says_so(tmp_path, slurm, capsys, fault):
    """sbatch refuses the second job (fail), or queues it and answers without an id (noid): the first job (and the
    unrecorded one, found by the launch's token) are scancelled by id, and the manifest records each job's fate."""
    (tmp_path / "sft.yaml").write_text(yaml.safe_dump(TRAIN_YAML))
    (tmp_path / "heldout.json").write_text("[]\n")
    slurm.update(**{f"{fault}_sbatch_at": 2})
    code, out, err = _launch(tmp_path, capsys, "--train_config_path", "sft.yaml", "--gpus_per_node", "1",
                             "--eval_tasks", "heldout.json", "--job_name", f"roll_{fault}")
    assert code == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    why = ("sbatch refused job 'eval': Batch job submission failed: injected failure" if fault == "fail"
           else "sbatch answered job 'eval' without a job id ('')")
    assert err.startswith(f"hpc-launch: error: {why}"), err
    cancelled = ["100"] if fault == "fail" else ["100", "101"]  # 101: queued, its answer lost, found by its tag
    assert slurm.cancelled_ids() == cancelled and f"cancelled the {len(cancelled)} job(s) already submitted" in err
    assert all(slurm.job(i)["state"] == "CANCELLED" for i in cancelled)
    record = _manifest(tmp_path / "exp" / f"roll_{fault}")
    jobs = {j["key"]: j for j in record["jobs"]}
    assert jobs["train"]["job_id"] == "100" and jobs["train"]["state"] == "CANCELLED"
    assert jobs["train"]["reason"] == f"cancelled by the launcher: {why}"
    assert jobs["eval"]["state"] == "SUBMIT_FAILED" and jobs["eval"]["error"] == why and jobs["eval"]["job_id"] is None
    assert all(slurm.job(i)["comment"].startswith(f"{record['token']}:") for i in cancelled)


def test_a_rollback_names_a_job_that_scancel_could_not_stop(tmp_path, slurm, capsys):
    (tmp_path / "sft.yaml").write_text(yaml.safe_dump(TRAIN_YAML))
    (tmp_path / "heldout.json").write_text("[]\n")
    slurm.update(fail_sbatch_at=2, survive_scancel=["100"])
    code, out, err = _launch(tmp_path, capsys, "--train_config_path", "sft.yaml", "--gpus_per_node", "1",
                             "--eval_tasks", "heldout.json", "--job_name", "stuck")
    assert code == 1 and "job(s) 100 still exist: scancel 100" in err, err
    jobs = _jobs(tmp_path / "exp" / "stuck")
    assert jobs["train"]["state"] == "PENDING" and jobs["train"]["reason"] == "still queued: cancelling it failed"
    assert jobs["eval"]["state"] == "SUBMIT_FAILED"


# --- status: exit codes ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("states, expected", [
    ({"100": "COMPLETED", "101": "COMPLETED", "102": "COMPLETED"}, 0),
    ({"100": "COMPLETED", "101": "RUNNING", "102": "PENDING"}, 3),
    ({"100": "FAILED", "101": "PENDING", "102": "PENDING"}, 3),  # a job still queued: not over yet
    ({"100": "COMPLETED", "101": "FAILED", "102": "CANCELLED"}, 1),
    ({"100": "TIMEOUT", "101": "CANCELLED", "102": "CANCELLED"}, 1),
    ({"100": "COMPLETED", "101": "COMPLETED", "102": "OUT_OF_MEMORY"}, 1),
])
def test_status_exit_code(chain, slurm, capsys, states, expected):
    slurm.set_states(**states)
    code, out, err = _verb(capsys, "status", str(chain))
    assert code == expected, out + err
    as_json = json.loads(_verb(capsys, "status", str(chain), "--json")[1])
    assert as_json["exit_code"] == expected
    assert {j["job_id"]: j["state"] for j in as_json["jobs"]} == states


# --- cancel ------------------------------------------------------------------------------------------------------


def test_cancel_records_what_it_stopped(chain, slurm, capsys):
    slurm.set_states(**{"100": "RUNNING"})
    code, out, err = _verb(capsys, "cancel", str(chain))
    assert code == 0, err
    assert slurm.cancelled_ids() == ["100", "101", "102"]
    assert {k: j["state"] for k, j in _jobs(chain).items()} == dict.fromkeys(("train", "consolidate", "eval"),
                                                                             "CANCELLED")


def test_cancel_names_the_jobs_scancel_could_not_stop_and_exits_1(chain, slurm, capsys):
    slurm.set_states(**{"100": "RUNNING"})
    slurm.update(survive_scancel=["100", "102"])
    code, out, err = _verb(capsys, "cancel", str(chain))
    assert code == 1, out + err
    assert err.strip() == ("hpc-launch cancel: error: job(s) 100, 102 are still queued or running after scancel; "
                           "try again")
    assert slurm.cancelled_ids() == ["100", "101", "102"]
    jobs = _jobs(chain)
    assert jobs["consolidate"]["state"] == "CANCELLED"
    assert jobs["consolidate"]["reason"].startswith("cancelled by hpc-launch cancel at ")
    assert jobs["train"]["state"] == "RUNNING" and jobs["eval"]["state"] == "PENDING"


def test_cancel_of_one_job_leaves_the_others(chain, slurm, capsys):
    assert _verb(capsys, "cancel", str(chain), "eval")[0] == 0
    assert slurm.cancelled_ids() == ["102"]
    assert [j["state"] for j in _jobs(chain).values()] == ["PENDING", "PENDING", "CANCELLED"]


# --- retry -------------------------------------------------------------------------------------------------------


def test_retry_drops_dependencies_on_completed_jobs_and_follows_the_new_ids(chain, slurm, capsys):
    slurm.set_states(**{"100": "COMPLETED", "101": "FAILED", "102": "CANCELLED"})
    code, out, err = _verb(capsys, "retry", str(chain))
    assert code == 0, err
    consolidate, evaluate = slurm.submissions()[-2:]
    assert not any(a.startswith("--dependency") for a in consolidate), consolidate  # train (100) completed
    assert "--dependency=afterok:103" in evaluate, evaluate  # the new consolidate, not the old 101
    jobs = _jobs(chain)
    assert jobs["train"]["job_id"] == "100" and jobs["train"]["history"] == []
    assert (jobs["consolidate"]["job_id"], jobs["eval"]["job_id"]) == ("103", "104")
    assert [h["job_id"] for h in jobs["consolidate"]["history"]] == ["101"]
    assert _manifest(chain)["attempts"] == 2
    assert not (chain / "state" / "train.resume").exists()  # train completed: nothing to resume


def test_retry_of_a_failed_train_resubmits_the_whole_chain(chain, slurm, capsys):
    slurm.set_states(**{"100": "FAILED", "101": "CANCELLED", "102": "CANCELLED"})
    assert _verb(capsys, "retry", str(chain))[0] == 0
    train, consolidate, evaluate = slurm.submissions()[-3:]
    assert not any(a.startswith("--dependency") for a in train)
    assert "--dependency=afterok:103" in consolidate and "--dependency=afterok:104" in evaluate
    assert (chain / "state" / "train.resume").exists()


def test_retry_refuses_while_jobs_run_and_does_nothing_when_all_completed(chain, slurm, capsys):
    slurm.set_states(**{"100": "COMPLETED", "101": "RUNNING", "102": "PENDING"})
    code, out, err = _verb(capsys, "retry", str(chain))
    assert code == 2 and "consolidate (101), eval (102) still queued or running" in err
    slurm.set_states(**{"101": "COMPLETED", "102": "COMPLETED"})
    code, out, err = _verb(capsys, "retry", str(chain))
    assert code == 0 and "nothing to retry" in out and len(slurm.submissions()) == 3


# --- datagen arrays: MaxArraySize from the controller, and retry by chunk number --------------------------------


def _datagen(tmp_path: Path, capsys, chunks: int, name: str) -> tuple[int, str, str]:
    tasks = tmp_path / "tasks"
    for i in range(chunks):
        (tasks / f"t{i:03d}").mkdir(parents=True, exist_ok=True)
    (tmp_path / "gen.py").write_text("print('generator')\n")
    (tmp_path / "none.yaml").write_text(yaml.safe_dump({"engine": "none", "model": "none", "chunk_size": 1,
                                                        "chunk_parallelism": 2}))
    return _launch(tmp_path, capsys, "--job_type", "datagen", "--datagen_config", "none.yaml", "--no-enable_task_gen",
                   "--enable_trace_gen", "--trace_script", "gen.py", "--trace_target_repo", "org/t",
                   "--trace_input_path", str(tasks), "--job_name", name)


def test_max_array_size_from_the_controller_splits_a_datagen_plan(tmp_path, slurm, capsys):
    """The controller says MaxArraySize = 10 (indices 0-9): 25 chunks are arrays of 9, 9 and 7, each after the
    one before, and each records the chunk its task 0 works on."""
    slurm.update(config="ClusterName             = localslurm\nMaxArraySize            = 10\n")
    code, out, err = _datagen(tmp_path, capsys, 25, "split")
    assert code == 0, err
    assert ["scontrol", "show", "config"] in slurm.calls("scontrol")
    jobs = _jobs(tmp_path / "exp" / "split")
    arrays = {k: (j["array"], j["array_first"], j["array_size"]) for k, j in jobs.items() if j["array"]}
    assert arrays == {"traces_0": ("0-8%2", 0, 9), "traces_1": ("0-8%2", 9, 9), "traces_2": ("0-6%2", 18, 7)}
    argv = slurm.submissions()
    assert [next(a for a in c if a.startswith("--array=")) for c in argv] == [
        "--array=0-8%2", "--array=0-8%2", "--array=0-6%2"]
    assert "--dependency=afterany:100" in argv[1] and "--dependency=afterany:101" in argv[2]


def test_the_default_max_array_size_keeps_25_chunks_one_array(tmp_path, slurm, capsys):
    code, out, err = _datagen(tmp_path, capsys, 25, "whole")
    assert code == 0, err
    assert [j["array"] for j in _manifest(tmp_path / "exp" / "whole")["jobs"]] == ["0-24%2"]


def test_retry_of_split_arrays_looks_for_the_done_markers_of_their_own_chunks(tmp_path, slurm, capsys):
    """Chunks 0-12 have done markers (written by the first attempt): traces_0 is complete, traces_1 reruns its tasks
    4-8 (chunks 13-17), traces_2 all of its tasks (chunks 18-24)."""
    slurm.update(config="MaxArraySize = 10\n")
    assert _datagen(tmp_path, capsys, 25, "again")[0] == 0
    exp = tmp_path / "exp" / "again"
    slurm.set_states(**{"100": "FAILED", "101": "FAILED", "102": "CANCELLED"})
    (exp / "chunks").mkdir(exist_ok=True)
    for chunk in range(13):
        (exp / "chunks" / f"chunk_{chunk:03d}.done").touch()
    code, out, err = _verb(capsys, "retry", str(exp))
    assert code == 0, err
    retried = slurm.submissions()[3:]
    assert [next(a for a in c if a.startswith("--array=")) for c in retried] == ["--array=4-8%2", "--array=0-6%2"]
    jobs = _jobs(exp)
    assert jobs["traces_0"]["job_id"] == "100" and jobs["traces_0"]["history"] == []
    assert (jobs["traces_1"]["job_id"], jobs["traces_1"]["array"]) == ("103", "4-8%2")
    assert (jobs["traces_2"]["job_id"], jobs["traces_2"]["array"]) == ("104", "0-6%2")
    assert "--dependency=afterany:103" in retried[1]  # after the retried array, not the first attempt's 101


# --- --wait: heartbeats for quiet jobs ---------------------------------------------------------------------------


def test_wait_prints_heartbeats_with_pending_reasons_while_nothing_changes(chain, slurm, capsys, monkeypatch):
    """The jobs stay pending for ~10 simulated minutes: the wait says so at growing intervals, then reports."""
    now, sleeps = [0.0], []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds
        if now[0] > 600:
            slurm.set_states(**{"100": "COMPLETED", "101": "COMPLETED", "102": "COMPLETED"})

    monkeypatch.setattr(status, "poll", functools.partial(status.poll, clock=lambda: now[0], sleep=sleep))
    code, out, err = _verb(capsys, "status", str(chain), "--wait")
    assert code == 0, out + err
    beats = [line for line in out.splitlines() if "still waiting:" in line]
    assert len(beats) >= 3, out
    assert beats[0].endswith("still waiting: train PENDING (Priority), consolidate PENDING (Priority), "
                             "eval PENDING (Priority)")
    assert "train: COMPLETED" in out and max(sleeps) == 60.0
