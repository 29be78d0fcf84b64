"""The experiment's manifest: what was planned and submitted, and how each job is doing.

Typed, versioned (`schema`), read and written only here, and replaced atomically (written aside,
fsynced, renamed). Backends map their own state words onto State.
"""

from __future__ import annotations

import json
import os
import typing
from dataclasses import asdict, field, fields
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path

from hpc.errors import LaunchError
from hpc.readers import read_json, type_name, type_ok
from hpc.records import record
from hpc.spec import Plan

FILE = "manifest.json"
SCHEMA = 1


class State(str, Enum):
    """One job's state, whatever the backend."""

    PLANNED = "PLANNED"  # written, not submitted (a dry run, or a job after a refused one)
    SUBMITTING = "SUBMITTING"  # about to be submitted: recorded before the backend is asked
    SUBMIT_FAILED = "SUBMIT_FAILED"  # the backend refused it
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMEOUT = "TIMEOUT"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    NODE_FAIL = "NODE_FAIL"
    PREEMPTED = "PREEMPTED"
    UNKNOWN = "UNKNOWN"

    @property
    def done(self) -> bool:
        return self not in (State.PLANNED, State.SUBMITTING, State.PENDING, State.RUNNING, State.UNKNOWN)

    def __str__(self) -> str:
        return self.value


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@record(eq=True, frozen=False)
class JobRecord:
    """One job in the manifest: its script, dependencies, array and, once submitted, its id and history."""

    key: str
    name: str
    job_type: str
    script: str
    dependencies: list[dict[str, str]]
    array: str | None = None  # the backend's array spec, e.g. "0-4%2"
    array_size: int | None = None
    job_id: str | None = None
    submitted_at: str | None = None
    submit_argv: list[str] | None = None
    state: State = State.PLANNED
    backend_state: str | None = None  # the backend's own word for it
    exit_code: str | None = None
    elapsed: str | None = None
    reason: str | None = None  # why it did not run, or was cancelled
    error: str | None = None  # the backend's refusal
    array_first: int = 0  # the number of the unit (e.g. datagen chunk) that array task 0 works on
    history: list[dict[str, object]] = field(default_factory=list)  # earlier attempts: job_id, state, array, ...

    def submitted(self, job_id: str, argv: list[str]) -> None:
        self.job_id, self.submit_argv, self.submitted_at, self.state = job_id, argv, utc_now(), State.PENDING

    def attempt(self, job_id: str, argv: list[str], array: str | None, array_size: int | None) -> None:
        """Submitted again (hpc-launch retry): the attempt before goes to history."""
        if self.job_id or self.state != State.PLANNED:
            self.history.append({"job_id": self.job_id, "state": str(self.state), "array": self.array,
                                 "submitted_at": self.submitted_at, "exit_code": self.exit_code})
        self.array, self.array_size = array, array_size
        self.reason, self.error, self.exit_code, self.elapsed = None, None, None, None
        self.submitted(job_id, argv)


@record(eq=True, frozen=False)
class Manifest:
    """manifest.json of an experiment: its jobs, how they depend on each other and what became of them."""

    experiment: str
    experiment_dir: str
    cluster: str
    backend: str
    dry_run: bool
    created_at: str
    jobs: list[JobRecord] = field(default_factory=list)
    attempts: int = 1  # hpc-launch retry adds one
    token: str | None = None  # tags this launch's submissions, so that even an unrecorded one can be found
    schema: int = SCHEMA

    @property
    def path(self) -> Path:
        return Path(self.experiment_dir) / FILE

    def job(self, key: str) -> JobRecord:
        return next(j for j in self.jobs if j.key == key)

    @property
    def submitted(self) -> list[JobRecord]:
        return [j for j in self.jobs if j.job_id]

    @classmethod
    def for_plan(cls, plan: Plan, backend: str, scripts: dict[str, str], arrays: dict[str, str],
                 dry_run: bool) -> "Manifest":
        """The manifest of a planned launch; scripts and arrays (key -> value) come from the backend."""
        jobs = [JobRecord(key=j.key, name=j.name, job_type=j.job_type, script=str(plan.experiment_dir / scripts[j.key]),
                          dependencies=[{k: v for k, v in asdict(d).items() if v is not None} for d in j.dependencies],
                          array=arrays.get(j.key), array_size=j.array.size if j.array else None,
                          array_first=j.array.first if j.array else 0)
                for j in plan.jobs]
        return cls(experiment=plan.experiment_dir.name, experiment_dir=str(plan.experiment_dir), cluster=plan.cluster,
                   backend=backend, dry_run=dry_run, created_at=utc_now(), jobs=jobs)

    def to_json(self) -> str:
        data = asdict(self)
        for job in data["jobs"]:
            job["state"] = str(job["state"])
        return json.dumps(data, indent=2) + "\n"

    def write(self, directory: Path | None = None) -> None:
        """Replace the manifest atomically: a reader never sees half of it, a crash never loses the old one."""
        write_atomic((directory or Path(self.experiment_dir)) / FILE, self.to_json())


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a crash
    finally:
        os.close(directory)


_JOB_FIELDS = {f.name for f in fields(JobRecord)}
_FIELDS = {f.name for f in fields(Manifest)}
#: Launcher words and SLURM states of manifests written before `schema` existed.
_OLD_STATES = {"planned": "PLANNED", "submitted": "PENDING", "submit_failed": "SUBMIT_FAILED",
               "cancelled_by_launcher": "CANCELLED"}


def _upgrade(data: dict) -> dict:
    """A manifest without `schema` (hpc-launch 0.1) in today's shape."""
    data = {**data, "backend": "slurm", "schema": SCHEMA}
    jobs = []
    for job in data.get("jobs", []):
        job = dict(job)
        job["job_id"], job["submit_argv"] = job.pop("slurm_job_id", None), job.pop("sbatch_argv", None)
        word = str(job.get("state", "planned"))
        job["backend_state"] = word if word.isupper() else None
        job["state"] = _OLD_STATES.get(word, word.split()[0] if word.isupper() else "UNKNOWN")
        job["dependencies"] = [{("external" if k == "slurm_job_id" else k): v for k, v in d.items()}
                               for d in job.get("dependencies", [])]
        jobs.append(job)
    data["jobs"] = jobs
    return data


_Record = typing.TypeVar("_Record", "JobRecord", "Manifest")


def _typed(record: _Record) -> _Record:
    """The record, if each of its fields has its declared type; TypeError naming the first that has not."""
    hints = typing.get_type_hints(type(record))
    for f in fields(record):  # type: ignore[arg-type]
        value = getattr(record, f.name)
        if not type_ok(value, hints[f.name]):
            raise TypeError(f"{f.name} must be {type_name(hints[f.name])}, not {value!r}")
    return record


def read(experiment_dir: Path) -> Manifest:
    """The manifest of an experiment directory; one line naming the problem if it is not one."""
    path = Path(experiment_dir) / FILE
    if not os.path.lexists(path):
        raise LaunchError(f"{experiment_dir} has no {FILE}; is it an experiment directory?")
    data = read_json(path, "manifest", "restore it or launch again")
    try:
        if "schema" not in data:
            data = _upgrade(data)
        data["experiment_dir"] = str(Path(experiment_dir).absolute())  # where it is now
        if data["schema"] > SCHEMA:
            raise LaunchError(f"{path} was written by a newer hpc-launch (schema {data['schema']}); upgrade hpc-launch")
        jobs = []
        for job in data["jobs"]:
            job = {k: v for k, v in job.items() if k in _JOB_FIELDS}
            state = job.get("state", "UNKNOWN")
            job["state"] = State(state) if state in State.__members__ else State.UNKNOWN
            jobs.append(_typed(JobRecord(**job)))
        return _typed(Manifest(**{**{k: v for k, v in data.items() if k in _FIELDS}, "jobs": jobs}))
    except LaunchError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise LaunchError(f"{path} is not a valid hpc-launch manifest ({exc}); restore it or launch again") from None
