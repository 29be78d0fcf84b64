"""Pure parts of the commands after a launch: first error lines, exit codes, ages, the wait's resilience."""

from __future__ import annotations

import functools
import io
import json
import re
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from hpc.backends import JobStatus
from hpc.errors import BackendError
from hpc.experiments import age
from hpc.manifest import JobRecord, Manifest, State
from hpc.status import ended_well, exit_code, first_error, poll

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
            raise BackendError("sacct failed: Problem talking to the database")
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


# --- record, table, --json, --wait's report (hpc/status.py) with a scripted backend ------------------------------

from hpc import status  # noqa: E402


def _job(key: str, kind: str, job_id: str | None, state: State = P, deps=(), **kw) -> JobRecord:
    return JobRecord(key=key, name=key, job_type=kind, script="s", dependencies=[dict(d) for d in deps], job_id=job_id,
                     state=state, **kw)


def _written(tmp_path, *jobs: JobRecord) -> Manifest:
    m = Manifest(experiment="e", experiment_dir=str(tmp_path), cluster="local", backend="slurm", dry_run=False,
                 created_at="2026-12-01T00:00:00+00:00", jobs=list(jobs))
    m.write()
    return m


class ScriptedBackend:
    """Answers each query with the next of `answers` (the last one forever); logs are logs/<key>[_<task>].out."""

    def __init__(self, *answers: dict) -> None:
        self.answers, self.queried = list(answers), 0

    def query(self, jobs):
        self.queried += 1
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]

    def log_path(self, experiment_dir, job, task=None):
        return Path(experiment_dir) / "logs" / (f"{job.key}_{task}.out" if task is not None else f"{job.key}.out")


def test_record_stores_each_state_and_why_a_dependent_did_not_run(tmp_path):
    afterok, afterany = {"kind": "afterok", "job": "train"}, {"kind": "afterany", "job": "train"}
    m = _written(tmp_path, _job("train", "train", "1"), _job("eval", "eval", "2", deps=[afterok]),
                 _job("late", "eval", "3", deps=[afterok]), _job("any", "eval", "4", deps=[afterany]),
                 _job("ext", "eval", "5", deps=[{"kind": "afterok", "external": "77"}]))
    status.record(m, {"1": JobStatus("1", F, "FAILED", "1:0", "00:01:00", reason="Resources"),
                      "2": JobStatus("2", P, "PENDING", reason="DependencyNeverSatisfied"),
                      "3": JobStatus("3", R, "RUNNING"), "4": JobStatus("4", P, "PENDING", reason="Dependency"),
                      "5": JobStatus("5", X, "CANCELLED")})
    train = m.job("train")
    assert (train.state, train.backend_state, train.exit_code, train.elapsed) == (F, "FAILED", "1:0", "00:01:00")
    assert train.reason is None  # accounting's old pending reason of a finished job is not shown
    assert m.job("eval").reason == "not run: train ended FAILED"  # beats the pending reason
    assert m.job("late").reason is None and m.job("late").state == R  # it runs after all
    assert m.job("any").reason == "pending: Dependency"  # afterany: runs whatever train did
    assert m.job("ext").reason is None
    assert json.loads((tmp_path / "manifest.json").read_text())["jobs"][1]["reason"] == "not run: train ended FAILED"
    status.record(m, {"1": JobStatus("1", R, "RUNNING"), "2": JobStatus("2", P, "PENDING", reason="")})
    assert m.job("train").reason is None


def test_the_table_and_the_json_show_what_each_job_is_doing(tmp_path):
    m = _written(tmp_path, _job("train", "train", "12", C, exit_code="0:0", elapsed="00:05:00"),
                 _job("traces", "traces", "13", R, array="0-2%2", elapsed="1/3 tasks COMPLETED",
                      reason="pending: JobArrayTaskLimit"),
                 _job("eval", "eval", None, State.PLANNED))
    states = {"13": JobStatus("13", R, "RUNNING", tasks={"RUNNING": 1, "COMPLETED": 1, "PENDING": 1})}
    assert status.table(m, states, ScriptedBackend({})).splitlines() == [
        "job                  id  state         elapsed    exit  details",
        f"train                12  COMPLETED     00:05:00   0:0   log {tmp_path}/logs/train.out",
        "traces               13  RUNNING                        1 COMPLETED, 1 PENDING, 1 RUNNING; "
        f"pending: JobArrayTaskLimit; log {tmp_path}/logs/traces.out",
        "eval                  -  PLANNED"]
    text = status.as_json(m, states, ScriptedBackend({}))
    assert text.startswith('{\n  "experiment": ') and '\n    {\n      "key": "train",' in text  # indented by 2
    data = json.loads(text)
    assert data["experiment"] == str(tmp_path) and data["exit_code"] == 3
    assert data["jobs"][1] == {"key": "traces", "job_id": "13", "state": "RUNNING", "backend_state": None,
                               "reason": "pending: JobArrayTaskLimit", "elapsed": "1/3 tasks COMPLETED",
                               "exit_code": None, "tasks": {"RUNNING": 1, "COMPLETED": 1, "PENDING": 1},
                               "log": f"{tmp_path}/logs/traces.out"}
    assert data["jobs"][2]["log"] is None and data["jobs"][0]["tasks"] == {}


def test_wait_reports_the_log_tails_and_the_first_error_of_what_failed(tmp_path, monkeypatch, capsys):
    _written(tmp_path, _job("eval", "eval", "3"), _job("train", "train", "1"),
             _job("gen", "traces", "2", array="0-2%2"))
    backend = ScriptedBackend({"1": JobStatus("1", C, "COMPLETED"), "2": JobStatus("2", R, "RUNNING"),
                               "3": JobStatus("3", P, "PENDING")},
                              {"1": JobStatus("1", C, "COMPLETED"),
                               "2": JobStatus("2", F, "FAILED", failed_tasks=(2, 0)), "3": JobStatus("3", X, "CANCELLED")})
    pipe = Pipe()
    monkeypatch.setattr(sys, "stdout", pipe)
    monkeypatch.setattr(status.backends, "get", lambda name: backend)
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "train.out").write_text("".join(f"t{i}\n" for i in range(40)))
    lines = "".join(f"g{i}\n" for i in range(40))
    (tmp_path / "logs" / "gen_2.out").write_bytes(lines.encode() + b"ValueError: \xff\n")  # not UTF-8
    (tmp_path / "logs" / "gen.out").write_text("the newest task, not the failed one\n")
    sleeps = []
    monkeypatch.setattr(status, "poll", functools.partial(status.poll, sleep=sleeps.append))
    assert status.wait_and_report(tmp_path, first_poll=0.5) == 1 and sleeps == [0.5]
    out = pipe.getvalue()
    assert out.startswith("  eval: PENDING\n  train: COMPLETED\n  gen: RUNNING\n  eval: CANCELLED\n  gen: FAILED\n"
                          "job                  id  state")  # then the table
    assert pipe.flushed[:2] == ["  eval: PENDING\n", "  eval: PENDING\n  train: COMPLETED\n"]  # each line at once
    tail = out.split(f"--- train: last lines of {tmp_path}/logs/train.out\n", 1)[1]
    assert tail.startswith("".join(f"t{i}\n" for i in range(32, 40)) + "--- gen")  # 8 lines of a job that ended well
    failed = out.split(f"--- gen: last lines of {tmp_path}/logs/gen_2.out\n", 1)[1]
    assert failed == "first error: ValueError: \ufffd\n" + lines[lines.index("g11"):] + "ValueError: \ufffd\n"
    assert "--- eval" not in out  # no log: nothing to show (and the others still are)
    assert manifests_state(tmp_path) == ["CANCELLED", "COMPLETED", "FAILED"]


class Pipe(io.StringIO):
    """stdout as a pipe: what had been written at each flush (progress must reach a pipe as it happens)."""

    def __init__(self) -> None:
        super().__init__()
        self.flushed: list[str] = []

    def flush(self) -> None:
        self.flushed.append(self.getvalue())


def manifests_state(tmp_path) -> list[str]:
    return [j["state"] for j in json.loads((tmp_path / "manifest.json").read_text())["jobs"]]


def test_wait_without_an_error_line_says_so_and_ctrl_c_leaves_the_jobs(tmp_path, monkeypatch, capsys):
    _written(tmp_path, _job("train", "train", "1"))
    backend = ScriptedBackend({"1": JobStatus("1", State.TIMEOUT, "TIMEOUT")})
    monkeypatch.setattr(status.backends, "get", lambda name: backend)
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "train.out").write_text("[hpc-launch] job 1 starts\n")
    assert status.wait_and_report(tmp_path) == 1
    assert "first error: no error line found\n[hpc-launch] job 1 starts\n" in capsys.readouterr().out

    def interrupted(*args, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(status, "poll", interrupted)
    assert status.wait_and_report(tmp_path) == 130
    assert capsys.readouterr().err == ("\nhpc-launch: stopped waiting; the jobs keep running. Follow them with: "
                                       f"hpc-launch status {tmp_path} --wait\n")


def test_hpc_status_prints_the_table_or_json_and_exits_with_the_state(tmp_path, monkeypatch, capsys):
    _written(tmp_path, _job("train", "train", "1"))
    backend = ScriptedBackend({"1": JobStatus("1", R, "RUNNING")})
    monkeypatch.setattr(status.backends, "get", lambda name: backend)
    assert status.main([str(tmp_path)]) == 3
    assert capsys.readouterr().out.splitlines()[1].startswith("train                 1  RUNNING")
    assert status.main([str(tmp_path), "--json"]) == 3 and json.loads(capsys.readouterr().out)["exit_code"] == 3
    backend.answers = [{"1": JobStatus("1", C, "COMPLETED")}]
    assert status.main([str(tmp_path), "--wait"]) == 0 and "  train: COMPLETED" in capsys.readouterr().out
    _written(tmp_path, _job("train", "train", None, State.PLANNED))
    assert status.main([str(tmp_path)]) == 2
    assert capsys.readouterr().err == ("hpc-status: error: this experiment has no submitted jobs (was it a dry run?); "
                                       "launch it without --dry_run\n")


def test_show_by_default_prints_the_table_once_and_wait_starts_polling_at_2_s(tmp_path, monkeypatch, capsys):
    _written(tmp_path, _job("train", "train", "1"))
    backend = ScriptedBackend({"1": JobStatus("1", R, "RUNNING")}, {"1": JobStatus("1", C, "COMPLETED")})
    monkeypatch.setattr(status.backends, "get", lambda name: backend)
    assert status.show(tmp_path) == 3 and backend.queried == 1
    assert capsys.readouterr().out.startswith("job ")
    sleeps = []
    monkeypatch.setattr(status, "poll", functools.partial(status.poll, sleep=sleeps.append))
    assert status.main([str(tmp_path), "--wait"]) == 0 and sleeps == []
    backend.answers = [{"1": JobStatus("1", R, "RUNNING")}, {"1": JobStatus("1", C, "COMPLETED")}]
    assert status.main([str(tmp_path), "--wait"]) == 0 and sleeps == [2.0]


def test_hpc_status_help(capsys):
    with pytest.raises(SystemExit):
        status.main(["--help"])
    text = capsys.readouterr().out
    assert status.__doc__.strip() in text  # the description as written (exit codes on their own line)
    flat = " ".join(text.split())
    assert flat.startswith("usage: hpc-status [-h] [--wait] [--json] EXPERIMENT ")
    for line in ("EXPERIMENT the experiment directory", "--wait wait until every job has ended",
                 "--json print the table as JSON"):
        assert line in flat


class Sequence:
    """Query answers in turn: a dict of states, or an exception to raise."""

    def __init__(self, *answers) -> None:
        self.answers = list(answers)

    def query(self, jobs):
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_poll_numbers_failures_from_one_again_after_an_answer_and_backs_off_by_half(capsys, monkeypatch):
    pending, done, down = ({"1": JobStatus("1", P, "PENDING")}, {"1": JobStatus("1", C, "COMPLETED")},
                           BackendError("sacct failed"))
    job = JobRecord(key="train", name="t", job_type="train", script="s", dependencies=[], job_id="1")
    pipe, slept = Pipe(), []
    monkeypatch.setattr(sys, "stderr", pipe)
    poll(Sequence(down, down, pending, pending, down, pending, done), [job], sleep=slept.append)  # type: ignore
    said = re.findall(r"\(failure (\d+)\)", pipe.getvalue())
    assert said == ["1", "2", "1"] and len(pipe.flushed) == 3
    assert slept == [2.0, 3.0, 4.5, 6.75, 10.125, 15.1875]


def test_heartbeats_come_30_s_after_the_last_news_then_at_doubling_intervals_up_to_10_min():
    now, beats = [0.0], []
    quiet = {"1": JobStatus("1", P, "PENDING")}

    def sleep(seconds: float) -> None:
        now[0] += seconds

    class Backend:
        def query(self, jobs):
            if now[0] < 40:
                return {}  # not known to SLURM yet: no news either
            if now[0] == 60:
                return {"1": JobStatus("1", P, "PENDING", reason="Priority")}  # news
            return quiet if now[0] < 3000 else {"1": JobStatus("1", C, "COMPLETED")}

    job = JobRecord(key="train", name="t", job_type="train", script="s", dependencies=[], job_id="1")
    poll(Backend(), [job], first_poll=10, max_poll=10, heartbeat=lambda s: beats.append(now[0]),
         clock=lambda: now[0], sleep=sleep)
    # quiet from the start: a beat at 30 s (the interval doubles to 60); news at 40 (known), 60 (a reason) and 70 (it
    # is gone): the next beat 60 s after the last news (130), then 120, 240, 480 and 600 s apart (at most 10 minutes)
    assert beats == [30.0, 130.0, 250.0, 490.0, 970.0, 1570.0, 2170.0, 2770.0]


def test_a_heartbeat_names_what_is_still_waiting_and_why(tmp_path, monkeypatch):
    _written(tmp_path, _job("train", "train", "1"), _job("eval", "eval", "2"), _job("gen", "traces", "3"))
    now = [0.0]

    class Backend(ScriptedBackend):
        def query(self, jobs):
            late = C if now[0] > 40 else P
            return {"1": JobStatus("1", C, "COMPLETED"), "2": JobStatus("2", late, str(late)),
                    "3": JobStatus("3", late, str(late), reason="" if late == C else "Resources")}

    monkeypatch.setattr(status.backends, "get", lambda name: Backend({}))
    monkeypatch.setattr(status, "poll", functools.partial(status.poll, clock=lambda: now[0],
                                                          sleep=lambda s: now.__setitem__(0, now[0] + 10)))
    pipe = Pipe()
    monkeypatch.setattr(sys, "stdout", pipe)
    assert status.wait_and_report(tmp_path) == 0
    beats = [line for line in pipe.getvalue().splitlines() if "still waiting" in line]
    assert len(beats) == 1, beats
    assert re.fullmatch(r"  \[\d\d:\d\d:\d\d\] still waiting: eval PENDING, gen PENDING \(Resources\)", beats[0])
    assert any(f.endswith(f"{beats[0]}\n") for f in pipe.flushed)  # seen at once through a pipe
