"""A launch's submission as one transaction: all its jobs are queued, or none is left behind.

Before each `sbatch` the intent is written (fsynced) into the manifest; every job carries the launch's token in
its comment, so one whose answer was lost (a hung or killed sbatch, an answer without an id) can still be found.
A refusal, a timeout, a full disk or SIGINT/SIGTERM rolls back: the jobs already queued (and any tagged job)
are cancelled by id, one query confirms they are gone, and the manifest and the one-line message name any
job that still exists.
"""

from __future__ import annotations

import signal
import subprocess
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from hpc.backends import Materialized
from hpc.backends.slurm import commands as cmd
from hpc.errors import BackendError
from hpc.manifest import JobRecord, Manifest, State
from hpc.spec import Plan

Run = Callable[..., subprocess.CompletedProcess]


class Interrupted(BackendError):
    """SIGINT or SIGTERM arrived while submitting."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name} while submitting")
        self.exit_code = 128 + signum


class _Failed(Exception):
    """One job could not be submitted; the message says why."""


@contextmanager
def _signals_interrupt() -> Iterator[None]:
    def handler(signum: int, frame: object) -> None:
        raise Interrupted(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextmanager
def _signals_ignored() -> Iterator[None]:
    """While rolling back: a second Ctrl-C must not leave the job it would interrupt behind."""
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def submit(plan: Plan, materialized: Materialized, manifest: Manifest, run: Run,
           cancel: Callable[[Sequence[JobRecord]], list[str]]) -> None:
    manifest.token = manifest.token or f"hpc-launch:{uuid.uuid4().hex[:12]}"
    job_ids: dict[str, str] = {}
    current = None
    try:
        with _signals_interrupt():
            for job in plan.jobs:
                current = manifest.job(job.key)
                argv = cmd.sbatch_argv(plan.experiment_dir / materialized.scripts[job.key], job.dependencies, job_ids,
                                       materialized.arrays.get(job.key), comment=f"{manifest.token}:{job.key}")
                current.state, current.submit_argv = State.SUBMITTING, argv
                manifest.write()  # the intent, before SLURM is asked
                proc = run(argv)
                if proc.returncode != 0:
                    raise _Failed(f"sbatch refused job {job.key!r}: "
                                  f"{cmd.slurm_message(proc.stdout, proc.stderr, proc.returncode)}")
                job_id = proc.stdout.strip().split(";")[0]
                if not job_id.isdigit():
                    raise _Failed(f"sbatch answered job {job.key!r} without a job id ({proc.stdout.strip()!r})")
                job_ids[job.key] = job_id
                current.submitted(job_id, argv)
                manifest.write()
                current = None
    except (_Failed, BackendError, OSError) as exc:
        reason = str(exc) if not isinstance(exc, OSError) else f"writing {manifest.path} failed ({exc.strerror})"
        with _signals_ignored():
            error = _roll_back(manifest, current, reason, run, cancel, exc)
        raise error from None


def _roll_back(manifest: Manifest, failed: JobRecord | None, reason: str, run: Run,
               cancel: Callable[[Sequence[JobRecord]], list[str]], exc: BaseException) -> BackendError:
    """Cancel what this launch queued (recorded or only tagged), record it, and say what is left."""
    if failed is not None:
        failed.state, failed.error = State.SUBMIT_FAILED, reason
    records = [j for j in manifest.jobs if j.job_id]
    try:
        found = cmd.tagged(run(cmd.squeue_tagged_argv()).stdout, manifest.token or "")
    except BackendError:
        found = []
    known = {j.job_id for j in records}
    unrecorded = [JobRecord(key="?", name="?", job_type="?", script="", dependencies=[], job_id=i)
                  for i in found if i not in known]
    try:
        alive = cancel(records + unrecorded) if records or unrecorded else []
    except BackendError:
        alive = [j.job_id or "" for j in records + unrecorded]
    for job in records:
        if job.job_id in alive:
            job.reason = "still queued: cancelling it failed"
        else:
            job.state, job.reason = State.CANCELLED, f"cancelled by the launcher: {reason}"
    note = ""
    try:
        manifest.write()
    except OSError as write_error:
        note = f"; the manifest could not be updated ({write_error.strerror})"
    done = len(records) + len(unrecorded) - len(alive)
    undone = (f"; job(s) {', '.join(alive)} still exist: scancel {' '.join(alive)}" if alive
              else f"; cancelled the {done} job(s) already submitted" if done else "")
    error = BackendError(f"{reason}{undone}{note}")
    error.exit_code = getattr(exc, "exit_code", 1) if isinstance(exc, Interrupted) else 1
    return error
