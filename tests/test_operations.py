"""Pure parts of the commands after a launch: first error lines, exit codes, ages, the wait's resilience."""

from __future__ import annotations

from datetime import datetime, timezone

from hpc.backends import JobStatus
from hpc.errors import SlurmError
from hpc.experiments import age
from hpc.logs import first_error
from hpc.manifest import JobRecord, State
from hpc.status import poll

TORCHRUN_LOG = """[hpc-launch] job 5 (t) on gpu1 starts
[rank0]: Traceback (most recent call last):
[rank0]:   File "lf_train.py", line 40, in main
[rank0]: ValueError: Template no_such_template does not exist.
W1201 torch.distributed.elastic.multiprocessing.api: Sending process 12 closing signal SIGTERM
Traceback (most recent call last):
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
[hpc-launch] train: error: training failed (exit 1)
"""


def test_first_error_is_the_real_exception_not_torchruns_summary(tmp_path):
    log = tmp_path / "t.out"
    log.write_text(TORCHRUN_LOG)
    assert first_error(log) == "[rank0]: ValueError: Template no_such_template does not exist."
    log.write_text("[hpc-launch] job 5 starts\nsrun: error: gpu1: task 0: Exited with exit code 2\n")
    assert first_error(log) == "srun: error: gpu1: task 0: Exited with exit code 2"
    log.write_text("[hpc-launch] job 5 starts\nflaky: t3 is broken\n[hpc-launch] job 5 exits with code 1\n")
    assert first_error(log) == "flaky: t3 is broken"
    assert first_error(tmp_path / "missing.out") is None


def test_age():
    now = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
    assert [age(t, now) for t in ("2026-12-01T11:59:30+00:00", "2026-12-01T09:00:00+00:00", "2026-11-28T12:00:00+00:00",
                                  "not a time")] == ["30s", "3h", "3d", "?"]


class FlakyBackend:
    """Fails the first `failures` queries, then reports the job PENDING once and COMPLETED after."""

    def __init__(self, failures: int) -> None:
        self.failures, self.calls = failures, 0

    def query(self, jobs):
        self.calls += 1
        if self.calls <= self.failures:
            raise SlurmError("sacct failed: Problem talking to the database")
        state = State.PENDING if self.calls == self.failures + 1 else State.COMPLETED
        return {"1": JobStatus("1", state, state.value)}


def test_poll_retries_failing_queries_and_heartbeats(capsys):
    backend, slept, beats = FlakyBackend(failures=4), [], []
    clock = iter(range(0, 10_000, 40))
    job = JobRecord(key="train", name="t", job_type="train", script="s", dependencies=[], job_id="1")
    states = poll(backend, [job], heartbeat=beats.append, clock=lambda: next(clock), sleep=slept.append)  # type: ignore[arg-type]
    assert states["1"].state == State.COMPLETED and backend.calls == 6
    assert capsys.readouterr().err.count("the jobs go on") == 4
    assert slept[:4] == [2.0, 3.0, 4.5, 6.75]  # backing off
