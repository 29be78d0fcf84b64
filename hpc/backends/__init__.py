"""Backends: how a planned launch (hpc.spec.Plan) becomes running jobs, and how they are followed.

Every backend has the same small set of verbs (the Backend protocol); SLURM lives in backends/slurm/.
Commands find the backend of an experiment by the name its manifest records.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from hpc.records import record

if TYPE_CHECKING:
    from hpc.options import LaunchOptions
    from hpc.manifest import JobRecord, Manifest, State
    from hpc.spec import Plan

#: Backend name -> the module holding its `Backend` class (imported only when used).
BACKENDS = {"slurm": "hpc.backends.slurm", "skypilot": "hpc.backends.skypilot"}


@record(eq=False)
class Limits:
    """What the backend allows, asked once per launch (defaults in a dry run)."""

    max_array_size: int = 1001


@record(eq=True)
class JobStatus:
    """A job's (or a whole array's) state as the backend reports it."""

    job_id: str
    state: "State"
    backend_state: str  # the backend's own word
    exit_code: str = ""
    elapsed: str = ""  # for arrays: how many tasks completed
    reason: str = ""  # why it is pending (the backend's words: Dependency, Resources, held, ...)
    tasks: dict[str, int] = field(default_factory=dict)  # arrays: State value -> number of tasks
    failed_tasks: tuple[int, ...] = ()  # arrays: task ids that ended without completing


@record(eq=False)
class Materialized:
    """What a backend makes of a plan before anything is submitted: files to write, and per job its
    script and (with <key> placeholders for ids not known yet) the command that will submit it."""

    files: dict[str, str]  # relative path -> text
    scripts: dict[str, str]  # job key -> relative path of its script
    commands: dict[str, list[str]]  # job key -> submit argv
    arrays: dict[str, str]  # job key -> the backend's array spec

    def preview(self) -> str:
        """Each job's submit command and script, as a dry run shows them."""
        return "".join(f"\n--- {key}: {' '.join(argv)}\n{self.files[self.scripts[key]]}"
                       for key, argv in self.commands.items())


class Backend(Protocol):
    name: str

    def limits(self, dry_run: bool) -> Limits:
        """What the backend allows (asks nothing in a dry run)."""

    def materialize(self, plan: "Plan") -> Materialized:
        """Scripts and commands for every job. Pure."""

    def validate(self, plan: "Plan", materialized: Materialized, asked: bool | None, dry_run: bool) -> None:
        """Ask the scheduler whether it would accept every job as it stands, submitting nothing; a refusal raises
        hpc.errors.LaunchError naming the job and the scheduler's reason. asked: --validate / --no-validate / None
        (the backend's default for a real submission or a dry run)."""

    def submit(self, plan: "Plan", materialized: Materialized, manifest: "Manifest") -> None:
        """Submit every job in order, recording each in the manifest as it goes; all or nothing."""

    def query(self, jobs: Sequence["JobRecord"]) -> dict[str, JobStatus]:
        """The state of many submitted jobs at once (job id -> status), in one batched request."""

    def resubmit(self, experiment_dir: Path, manifest: "Manifest", keys: Sequence[str],
                 tasks: dict[str, list[int]]) -> None:
        """Submit the recorded scripts of `keys` again, in manifest order, as the experiment's next attempt:
        dependencies on jobs not resubmitted are dropped (they completed), arrays run only `tasks[key]`."""

    def cancel(self, jobs: Sequence["JobRecord"]) -> list[str]:
        """Cancel jobs by their ids, then confirm with a query; returns the ids still queued or running."""

    def array_tasks(self, spec: str) -> list[int]:
        """The task ids of an array spec as this backend writes it."""

    def log_path(self, experiment_dir: Path, job: "JobRecord", task: int | None = None) -> Path:
        """Where a job writes its output (an array's task `task`; default: its newest task's)."""


def get(name: str, opts: "LaunchOptions | None" = None) -> Backend:
    """The backend called `name`; for a launch (opts given) made from its options when it takes them."""
    if name not in BACKENDS:
        from hpc.errors import LaunchError

        raise LaunchError(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}")
    cls = importlib.import_module(BACKENDS[name]).Backend
    return cls.for_launch(opts) if opts is not None and hasattr(cls, "for_launch") else cls()
