"""Whole experiments: `hpc-launch list [--experiments_dir D]` and `hpc-launch cancel EXPERIMENT [JOB]`."""

from __future__ import annotations

import argparse
import os
from datetime import datetime, timezone
from pathlib import Path

from hpc import backends
from hpc import manifest as manifests
from hpc.errors import BackendError, LaunchError
from hpc.manifest import Manifest, State


def overall(manifest: Manifest) -> str:
    """One word for an experiment: DRY-RUN, PENDING, RUNNING, COMPLETED, or the first bad state."""
    from hpc.status import ended_well

    jobs = manifest.submitted
    if not jobs:
        return "DRY-RUN" if manifest.dry_run else "NOT-SUBMITTED"
    if any(j.state == State.RUNNING for j in jobs):
        return "RUNNING"
    if any(not j.state.done for j in jobs):
        return "PENDING"
    bad = [j for j in jobs if not ended_well(j)]
    return str(bad[0].state) if bad else "COMPLETED"


def age(created_at: str, now: datetime | None = None) -> str:
    try:
        seconds = ((now or datetime.now(timezone.utc)) - datetime.fromisoformat(created_at)).total_seconds()
    except ValueError:
        return "?"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def list_experiments(directory: Path) -> int:
    """One line per experiment, newest first, from the manifests plus one batched query per backend for the
    live ones."""
    if not directory.is_dir():
        raise LaunchError(f"{directory} is not a directory; pass --experiments_dir DIR (default: $EXPERIMENTS_DIR, "
                          "else ./experiments)")
    found: list[Manifest] = []
    for path in sorted(directory.iterdir()):
        if (path / manifests.FILE).is_file():
            try:
                found.append(manifests.read(path))
            except LaunchError as exc:
                print(f"{path.name:<40} unreadable: {exc}")
    live: dict[str, list[manifests.JobRecord]] = {}
    for m in found:
        live.setdefault(m.backend, []).extend(j for j in m.submitted if not j.state.done)
    for name, jobs in live.items():
        if jobs:
            states = backends.get(name).query(jobs)
            for job in jobs:
                if (status := states.get(job.job_id or "")) is not None:
                    job.state = status.state
    for m in sorted(found, key=lambda m: m.created_at, reverse=True):
        kinds = ",".join(dict.fromkeys(j.job_type for j in m.jobs))
        print(f"{m.experiment:<40} {m.cluster:<12} {kinds:<32} {overall(m):<13} {age(m.created_at)}")
    return 0


def cancel(experiment_dir: Path, key: str | None) -> int:
    """Cancel the experiment's queued and running jobs (or one of them) by the ids in its manifest, confirm that
    they are gone, and record it."""
    from hpc.status import record, submitted

    manifest = manifests.read(experiment_dir)
    backend = backends.get(manifest.backend)
    jobs = submitted(manifest)
    if key is not None and key not in {j.key for j in jobs}:
        raise LaunchError(f"no submitted job {key!r} in {experiment_dir}; its jobs: {', '.join(j.key for j in jobs)}")
    record(manifest, backend.query(jobs))
    targets = [j for j in jobs if not j.state.done and (key is None or j.key == key)]
    if not targets:
        print(f"hpc-launch: nothing to cancel: every job of {experiment_dir.name} has ended")
        return 0
    alive = backend.cancel(targets)
    for job in targets:
        if job.job_id not in alive:
            job.state, job.reason = State.CANCELLED, f"cancelled by hpc-launch cancel at {manifests.utc_now()}"
    manifest.write()
    if alive:
        raise BackendError(f"job(s) {', '.join(alive)} are still queued or running after scancel; try again")
    print(f"hpc-launch: cancelled {', '.join(f'{j.key} ({j.job_id})' for j in targets)}")
    return 0


def default_dir() -> Path:
    return Path(os.environ.get("EXPERIMENTS_DIR", "experiments"))


def add_list_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--experiments_dir", "--experiments-dir", type=Path, default=None,
                   help="where the experiments are (default: $EXPERIMENTS_DIR, else ./experiments)")


def add_cancel_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("experiment_dir", type=Path, metavar="EXPERIMENT")
    p.add_argument("job", nargs="?", metavar="JOB", help="only this job (default: all of them)")
