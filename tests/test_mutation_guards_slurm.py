"""The SLURM submission transaction (hpc/backends/slurm/submit.py) called directly, with a scripted `run` in place of
sbatch/squeue and a scripted `cancel`: the argv sent, the manifest written at each step, the error and exit code.
In-process and instant; tests/test_operations_fake_slurm.py runs the same code through the CLI."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from hpc.backends.slurm.submit import Interrupted, submit
from hpc.errors import BackendError
from hpc.manifest import JobRecord, Manifest, State
from hpc.spec import Dependency


def _manifest(tmp_path: Path, token: str | None = None) -> Manifest:
    jobs = [JobRecord(key="train", name="t", job_type="train", script="s", dependencies=[]),
            JobRecord(key="eval", name="e", job_type="eval", script="s", dependencies=[{"kind": "afterok",
                                                                                       "job": "train"}])]
    return Manifest(experiment="x", experiment_dir=str(tmp_path), cluster="local", backend="slurm", dry_run=False,
                    created_at="2026-12-01T00:00:00+00:00", jobs=jobs, token=token)


PLAN = SimpleNamespace(experiment_dir=Path("/e"), jobs=[
    SimpleNamespace(key="train", dependencies=()),
    SimpleNamespace(key="eval", dependencies=(Dependency("afterok", job="train"),))])
MATERIALIZED = SimpleNamespace(scripts={"train": "programs/train.sbatch", "eval": "programs/eval.sbatch"},
                               arrays={"eval": "0-3%2"})


class Slurm:
    """`run`: sbatch answers from `answers` in turn (a CompletedProcess, an exception to raise, or a function to
    call); squeue lists
    `queue`. Records every argv and, at each sbatch, the manifest on disk."""

    def __init__(self, tmp_path: Path, *answers, queue: str = "") -> None:
        self.tmp_path, self.answers, self.queue, self.argv, self.on_disk = tmp_path, list(answers), queue, [], []

    def __call__(self, argv: list[str]) -> subprocess.CompletedProcess:
        self.argv.append(argv)
        if argv[0] == "squeue":
            if isinstance(self.queue, Exception):
                raise self.queue
            return subprocess.CompletedProcess(argv, 0, self.queue, "")
        self.on_disk.append(json.loads((self.tmp_path / "manifest.json").read_text()))
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer() if callable(answer) else answer


def ok(stdout: str) -> subprocess.CompletedProcess:
    return subprocess.CompletedProcess([], 0, stdout, "")


def refused(stderr: str, code: int = 1, stdout: str = "") -> subprocess.CompletedProcess:
    return subprocess.CompletedProcess([], code, stdout, stderr)


class Cancel:
    def __init__(self, alive: list[str] | Exception = ()) -> None:
        self.alive, self.asked = alive, []

    def __call__(self, jobs):
        self.asked.append([j.job_id for j in jobs])
        if isinstance(self.alive, Exception):
            raise self.alive
        return list(self.alive)


def test_each_job_is_recorded_as_submitting_before_sbatch_then_pending_with_its_id(tmp_path):
    manifest = _manifest(tmp_path)
    slurm = Slurm(tmp_path, ok("100;cluster\n"), ok("101\n"))
    submit(PLAN, MATERIALIZED, manifest, slurm, Cancel())
    token = manifest.token
    assert re.fullmatch(r"hpc-launch:[0-9a-f]{12}", token or "")
    assert slurm.argv == [
        ["sbatch", "--parsable", f"--comment={token}:train", "/e/programs/train.sbatch"],
        ["sbatch", "--parsable", "--array=0-3%2", "--dependency=afterok:100", f"--comment={token}:eval",
         "/e/programs/eval.sbatch"]]
    first, second = slurm.on_disk  # what the manifest said while each sbatch ran
    assert first["jobs"][0]["state"] == "SUBMITTING" and first["jobs"][0]["submit_argv"] == slurm.argv[0]
    assert first["jobs"][1]["state"] == "PLANNED"
    assert second["jobs"][0]["state"] == "PENDING" and second["jobs"][0]["job_id"] == "100"
    assert second["jobs"][1]["state"] == "SUBMITTING"
    written = json.loads((tmp_path / "manifest.json").read_text())
    assert [(j["job_id"], j["state"], j["submit_argv"]) for j in written["jobs"]] == [
        ("100", "PENDING", slurm.argv[0]), ("101", "PENDING", slurm.argv[1])]
    assert written["token"] == token


def test_a_retried_launch_keeps_its_token(tmp_path):
    manifest = _manifest(tmp_path, token="hpc-launch:abc")
    slurm = Slurm(tmp_path, ok("100\n"), ok("101\n"))
    submit(PLAN, MATERIALIZED, manifest, slurm, Cancel())
    assert manifest.token == "hpc-launch:abc" and slurm.argv[0][2] == "--comment=hpc-launch:abc:train"


def test_a_refusal_rolls_back_the_queued_job_and_the_unrecorded_tagged_one(tmp_path):
    manifest, cancel = _manifest(tmp_path, token="hpc-launch:abc"), Cancel()
    slurm = Slurm(tmp_path, ok("100\n"), refused("sbatch: error: QOS limit\n"),
                  queue="100|hpc-launch:abc:train\n105|hpc-launch:abc:eval\n106|someone else\n")
    with pytest.raises(BackendError) as caught:
        submit(PLAN, MATERIALIZED, manifest, slurm, cancel)
    why = "sbatch refused job 'eval': QOS limit"
    assert str(caught.value) == f"{why}; cancelled the 2 job(s) already submitted" and caught.value.exit_code == 1
    assert slurm.argv[-1] == ["squeue", "-h", "--me", "-o", "%i|%k"] and cancel.asked == [["100", "105"]]
    train, evaluate = (json.loads((tmp_path / "manifest.json").read_text()))["jobs"]
    assert (train["state"], train["reason"]) == ("CANCELLED", f"cancelled by the launcher: {why}")
    assert (evaluate["state"], evaluate["error"], evaluate["job_id"]) == ("SUBMIT_FAILED", why, None)


@pytest.mark.parametrize("answer, said", [(refused("", 1, stdout="Invalid account\n"), "Invalid account"),
                                           (refused("", 7), "exit code 7")])
def test_a_refusal_without_stderr_says_what_sbatch_printed_or_its_exit_code(tmp_path, answer, said):
    with pytest.raises(BackendError, match=f"^sbatch refused job 'train': {said}$"):
        submit(PLAN, MATERIALIZED, _manifest(tmp_path), Slurm(tmp_path, answer), Cancel())


def test_a_rollback_whose_scancel_fails_names_every_job_left(tmp_path):
    manifest = _manifest(tmp_path, token="hpc-launch:abc")
    slurm = Slurm(tmp_path, ok("100\n"), refused("sbatch: error: x\n"), queue="105|hpc-launch:abc:eval\n")
    with pytest.raises(BackendError) as caught:
        submit(PLAN, MATERIALIZED, manifest, slurm, Cancel(BackendError("scancel: no answer")))
    assert str(caught.value) == "sbatch refused job 'eval': x; job(s) 100, 105 still exist: scancel 100 105"


def test_a_rollback_that_cannot_cancel_or_list_names_every_job_left(tmp_path):
    manifest = _manifest(tmp_path)
    slurm = Slurm(tmp_path, ok("100\n"), ok("Submitted batch job\n"), queue=BackendError("squeue timed out"))
    with pytest.raises(BackendError) as caught:
        submit(PLAN, MATERIALIZED, manifest, slurm, Cancel(BackendError("scancel: no answer")))
    assert str(caught.value) == ("sbatch answered job 'eval' without a job id ('Submitted batch job'); "
                                 "job(s) 100 still exist: scancel 100")
    train = manifest.job("train")
    assert train.state == State.PENDING and train.reason == "still queued: cancelling it failed"
    assert manifest.job("eval").state == State.SUBMIT_FAILED


def test_nothing_queued_nothing_cancelled(tmp_path):
    manifest, cancel = _manifest(tmp_path), Cancel()
    slurm = Slurm(tmp_path, BackendError("sbatch --parsable did not answer within 60 s"))
    with pytest.raises(BackendError) as caught:
        submit(PLAN, MATERIALIZED, manifest, slurm, cancel)
    assert str(caught.value) == "sbatch --parsable did not answer within 60 s" and cancel.asked == []
    assert manifest.job("train").state == State.SUBMIT_FAILED


def test_a_full_disk_rolls_back_and_says_the_manifest_is_stale(tmp_path, monkeypatch):
    writes = []

    def write(self, directory=None):
        writes.append(self.job("train").state)
        if len(writes) >= 2:  # the intent is written; recording the answer and the rollback fail
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(Manifest, "write", write)
    manifest, cancel = _manifest(tmp_path), Cancel()
    (tmp_path / "manifest.json").write_text("{}")
    with pytest.raises(BackendError) as caught:
        submit(PLAN, MATERIALIZED, manifest, Slurm(tmp_path, ok("100\n")), cancel)
    assert str(caught.value) == (f"writing {tmp_path / 'manifest.json'} failed (No space left on device); cancelled "
                                 "the 1 job(s) already submitted; the manifest could not be updated "
                                 "(No space left on device)")
    assert caught.value.exit_code == 1 and cancel.asked == [["100"]]
    assert manifest.job("train").state == State.CANCELLED  # in memory: the failed write is not the job's refusal


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_submitting_rolls_back_and_exits_128_plus_it(tmp_path, signum):
    before, cancel = signal.getsignal(signum), Cancel()
    slurm = Slurm(tmp_path, ok("100\n"), lambda: os.kill(os.getpid(), signum))  # Ctrl-C during the second sbatch

    def cancel_and_be_interrupted_again(jobs):
        os.kill(os.getpid(), signum)  # ignored while rolling back: the cancel goes on
        return cancel(jobs)

    with pytest.raises(BackendError) as caught:
        submit(PLAN, MATERIALIZED, _manifest(tmp_path), slurm, cancel_and_be_interrupted_again)
    assert isinstance(caught.value, BackendError) and not isinstance(caught.value, Interrupted)
    name = signal.Signals(signum).name
    assert str(caught.value) == f"interrupted by {name} while submitting; cancelled the 1 job(s) already submitted"
    assert caught.value.exit_code == 128 + signum and cancel.asked == [["100"]]
    assert signal.getsignal(signum) == before  # the caller's handlers are back


# --- retry (hpc/retry.py): what is planned again, and what the verb records and prints ---------------------------

from hpc import retry  # noqa: E402
from hpc.backends import JobStatus  # noqa: E402
from hpc.backends.slurm import Backend as SlurmBackend  # noqa: E402
from hpc.errors import LaunchError  # noqa: E402

C, F, X = State.COMPLETED, State.FAILED, State.CANCELLED


def _launch(tmp_path: Path, *jobs: tuple) -> Manifest:
    """jobs: (key, job_type, state, array or None, extra JobRecord fields)."""
    records = [JobRecord(**{"key": key, "name": key, "job_type": kind, "script": f"{tmp_path}/{key}.sbatch",
                            "dependencies": [], "job_id": str(100 + i), "state": state, "array": array,
                            "array_size": 3 if array else None, **extra})
               for i, (key, kind, state, array, extra) in enumerate(jobs)]
    return Manifest(experiment=tmp_path.name, experiment_dir=str(tmp_path), cluster="local", backend="slurm",
                    dry_run=False, created_at="2026-12-01T00:00:00+00:00", jobs=records)


def _done(tmp_path: Path, *chunks: int) -> None:
    (tmp_path / "chunks").mkdir(exist_ok=True)
    for chunk in chunks:
        (tmp_path / "chunks" / f"chunk_{chunk:03d}.done").touch()


def test_failed_datagen_work_brings_its_server_and_cleanup_back(tmp_path):
    m = _launch(tmp_path, ("server", "server", X, None, {}), ("tasks", "tasks", F, "0-2%2", {}),
                ("cleanup", "cleanup", C, None, {}))
    _done(tmp_path, 0, 1)  # markers count for traces arrays only: every task of a tasks array runs again
    assert retry.plan_retry(SlurmBackend(), tmp_path, m) == (["server", "tasks", "cleanup"], {"tasks": [0, 1, 2]})
    m = _launch(tmp_path, ("server", "server", X, None, {}), ("traces", "traces", C, "0-2%2", {}),
                ("eval", "eval", F, None, {}), ("cleanup", "cleanup", C, None, {}))
    assert retry.plan_retry(SlurmBackend(), tmp_path, m) == (["eval"], {})  # no work again: no server
    m = _launch(tmp_path, ("server", "server", X, None, {}), ("traces", "traces", F, "0-2%2", {}),
                ("cleanup", "cleanup", C, None, {}))
    assert retry.plan_retry(SlurmBackend(), tmp_path, m) == (["server", "traces", "cleanup"], {"traces": [2]})


def test_a_second_retry_counts_tasks_from_the_first_attempt_and_drops_finished_arrays(tmp_path):
    first = {"job_id": "90", "state": "FAILED", "array": "0-8%2"}
    m = _launch(tmp_path, ("a", "traces", F, "7-8%2", {"array_first": 9, "history": [first, {"array": "7-8%2"}]}),
                ("b", "traces", F, "0-2%2", {"array_first": 18, "history": [{"job_id": "91", "array": None}]}),
                ("c", "traces", F, "0-1%2", {"array_first": 21}))
    _done(tmp_path, *range(9, 14), 19, 21, 22)
    again, tasks = retry.plan_retry(SlurmBackend(), tmp_path, m)
    assert again == ["a", "b"] and tasks == {"a": [5, 6, 7, 8], "b": [0, 2]}  # c: chunks 21-22 done


class RetryBackend:
    def __init__(self, states: dict[str, State]) -> None:
        self.states, self.resubmitted = states, []

    def query(self, jobs):
        return {j.job_id: JobStatus(j.job_id, self.states[j.job_id], str(self.states[j.job_id])) for j in jobs}

    def array_tasks(self, spec):
        return SlurmBackend().array_tasks(spec)

    def resubmit(self, experiment_dir, manifest, keys, tasks):
        self.resubmitted.append((experiment_dir, list(keys), tasks))
        for i, key in enumerate(keys):
            job = manifest.job(key)
            job.attempt(str(200 + i), ["sbatch"], "1-2%2" if key in tasks else None, len(tasks.get(key, [])) or None)
        manifest.write()


def test_retry_records_the_states_resubmits_and_says_what_it_did(tmp_path, monkeypatch, capsys):
    m = _launch(tmp_path, ("train", "train", C, None, {}), ("gen", "traces", C, "0-2%2", {}),
                ("eval", "eval", C, None, {}))
    m.write()
    backend = RetryBackend({"100": F, "101": F, "102": X})
    monkeypatch.setattr(retry.backends, "get", lambda name: backend)
    _done(tmp_path, 0)
    (tmp_path / "state").mkdir()  # a retry after a retry
    assert retry.retry(tmp_path, wait=False) == 0
    assert backend.resubmitted == [(tmp_path, ["train", "gen", "eval"], {"gen": [1, 2]})]
    assert capsys.readouterr().out == (f"hpc-launch: attempt 2 of {tmp_path.name}:\n  train: job 200\n"
                                       "  gen: job 201 (tasks 1-2%2)\n  eval: job 202\n")
    assert (tmp_path / "state" / "train.resume").exists()  # train resumes from its checkpoint
    written = retry.manifests.read(tmp_path)
    assert written.attempts == 2 and [j.history[0]["state"] for j in written.jobs] == ["FAILED", "FAILED", "CANCELLED"]


def test_retry_waits_when_asked_and_refuses_a_dry_run(tmp_path, monkeypatch, capsys):
    m = _launch(tmp_path, ("eval", "eval", C, None, {}))
    m.write()
    monkeypatch.setattr(retry.backends, "get", lambda name: RetryBackend({"100": F}))
    waited = []
    monkeypatch.setattr("hpc.status.wait_and_report", lambda experiment_dir: waited.append(experiment_dir) or 42)
    assert retry.retry(tmp_path, wait=True) == 42 and waited == [tmp_path]
    assert not (tmp_path / "state").exists()
    dry = _launch(tmp_path, ("eval", "eval", State.PLANNED, None, {"job_id": None}))
    dry.dry_run = True
    dry.write()
    with pytest.raises(LaunchError, match=f"^{tmp_path} is a dry run: nothing was submitted to retry; launch it"):
        retry.retry(tmp_path, wait=False)


def test_a_launch_whose_first_sbatch_was_refused_is_retried_whole(tmp_path, monkeypatch, capsys):
    m = _launch(tmp_path, ("eval", "eval", State.SUBMIT_FAILED, None, {"job_id": None}))
    m.write()
    backend = RetryBackend({})
    monkeypatch.setattr(retry.backends, "get", lambda name: backend)
    assert retry.retry(tmp_path, wait=False) == 0 and backend.resubmitted == [(tmp_path, ["eval"], {})]


def test_the_retry_command_line():
    import argparse

    parser = argparse.ArgumentParser(prog="hpc-launch retry")
    retry.add_arguments(parser)
    text = " ".join(parser.format_help().split())  # however wide the terminal
    assert text.startswith("usage: hpc-launch retry [-h] [--wait] EXPERIMENT positional arguments: EXPERIMENT ")
    assert "--wait wait for the resubmitted jobs and report how they ended" in text
    assert parser.parse_args(["e", "--wait"]).wait is True and parser.parse_args(["e"]).wait is False
