"""Pure parts of the commands after a launch: first error lines, exit codes, ages, the wait's resilience."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from hpc.backends import JobStatus
from hpc.errors import SlurmError
from hpc.experiments import age
from hpc.logs import first_error
from hpc.manifest import JobRecord, Manifest, State
from hpc.status import ended_well, exit_code, poll

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
    """Fails the first `failures` queries, then reports the job PENDING `pending` times and COMPLETED after."""

    def __init__(self, failures: int, pending: int = 1) -> None:
        self.failures, self.pending, self.calls = failures, pending, 0

    def query(self, jobs):
        self.calls += 1
        if self.calls <= self.failures:
            raise SlurmError("sacct failed: Problem talking to the database")
        state = State.PENDING if self.calls <= self.failures + self.pending else State.COMPLETED
        return {"1": JobStatus("1", state, state.value)}


def test_poll_retries_failing_queries_and_heartbeats(capsys):
    backend, slept, beats = FlakyBackend(failures=4, pending=5), [], []
    clock = iter(range(0, 10_000, 40))  # each look at the clock: 40 s later
    job = JobRecord(key="train", name="t", job_type="train", script="s", dependencies=[], job_id="1")
    states = poll(backend, [job], heartbeat=beats.append, clock=lambda: next(clock), sleep=slept.append)  # type: ignore[arg-type]
    assert states["1"].state == State.COMPLETED and backend.calls == 10
    assert capsys.readouterr().err.count("the jobs go on") == 4
    assert slept[:4] == [2.0, 3.0, 4.5, 6.75]  # backing off
    # Five quiet polls of the pending job: a heartbeat 30 s after the change, the next one 60 s after that (not 30:
    # the interval grows), each with what the query said.
    assert beats == [{"1": JobStatus("1", State.PENDING, "PENDING")}] * 2


def test_poll_without_quiet_polls_has_no_heartbeat():
    backend, beats = FlakyBackend(failures=0, pending=1), []
    clock = iter(range(0, 10_000, 40))
    job = JobRecord(key="train", name="t", job_type="train", script="s", dependencies=[], job_id="1")
    poll(backend, [job], heartbeat=beats.append, clock=lambda: next(clock), sleep=lambda s: None)
    assert beats == []  # every answer was news


# --- ended_well and the status exit code (hpc/status.py) ---------------------------------------------------------

JOB_TYPES = ("train", "consolidate", "eval", "server", "tasks", "traces", "cleanup")


@pytest.mark.parametrize("state", list(State))
@pytest.mark.parametrize("job_type", JOB_TYPES)
def test_ended_well_truth_table(job_type, state):
    """COMPLETED, or an inference server its cleanup cancelled; nothing else (not a cancelled cleanup or train)."""
    job = JobRecord(key=job_type, name="n", job_type=job_type, script="s", dependencies=[], job_id="1", state=state)
    expected = state == State.COMPLETED or (job_type == "server" and state == State.CANCELLED)
    assert ended_well(job) is expected


def _experiment(*jobs: tuple[str, State, str | None]) -> Manifest:
    return Manifest(experiment="e", experiment_dir="/nonexistent/e", cluster="local", backend="slurm", dry_run=False,
                    created_at="2026-12-01T00:00:00+00:00",
                    jobs=[JobRecord(key=f"{kind}{i}", name="n", job_type=kind, script="s", dependencies=[],
                                    job_id=job_id, state=state) for i, (kind, state, job_id) in enumerate(jobs)])


C, F, X, P, R = State.COMPLETED, State.FAILED, State.CANCELLED, State.PENDING, State.RUNNING


@pytest.mark.parametrize("jobs, expected", [
    ([("train", C, "1")], 0),
    ([("train", C, "1"), ("eval", C, "2")], 0),
    ([("server", X, "1"), ("traces", C, "2"), ("cleanup", C, "3")], 0),  # the cleanup cancelled the server
    ([("train", F, "1")], 1),
    ([("train", C, "1"), ("eval", X, "2")], 1),
    ([("server", X, "1"), ("traces", F, "2"), ("cleanup", C, "3")], 1),
    ([("server", C, "1"), ("traces", C, "2"), ("cleanup", X, "3")], 1),  # only a server may end cancelled
    ([("train", State.TIMEOUT, "1")], 1),
    ([("train", State.OUT_OF_MEMORY, "1")], 1),
    ([("train", State.NODE_FAIL, "1")], 1),
    ([("train", State.PREEMPTED, "1")], 1),
    ([("train", State.SUBMIT_FAILED, "1")], 1),
    ([("train", C, "1"), ("eval", State.SUBMIT_FAILED, None)], 1),  # a job that never ran
    ([("train", C, "1"), ("eval", State.PLANNED, None)], 1),
    ([("train", C, "1"), ("eval", P, "2")], 3),
    ([("train", R, "1"), ("eval", P, "2")], 3),
    ([("train", F, "1"), ("eval", P, "2")], 3),  # still queued beats failed: it is not over
    ([("train", State.UNKNOWN, "1")], 3),
    ([("train", State.SUBMITTING, "1")], 3),
])
def test_status_exit_code_truth_table(jobs, expected):
    assert exit_code(_experiment(*jobs)) == expected
