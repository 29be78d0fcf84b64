"""`hpc-launch retry EXPERIMENT [--wait]`: resubmit what failed or never ran, as the experiment's next attempt.

Scripts are the ones recorded at launch, so a retry means what the launch meant: train resumes from its newest
checkpoint, jobs after it follow (their dependencies on completed jobs are dropped), and datagen reruns only
the chunks without a done marker in the experiment, whichever attempt wrote it. The server of a datagen launch
(and its cleanup) runs again when work that needs it does.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hpc import backends
from hpc import manifest as manifests
from hpc.backends import Backend
from hpc.errors import LaunchError
from hpc.manifest import JobRecord, Manifest


def _chunk_done(experiment_dir: Path, unit: int) -> bool:
    return (experiment_dir / "chunks" / f"chunk_{unit:03d}.done").exists()


def _tasks(backend: Backend, experiment_dir: Path, job: JobRecord) -> list[int]:
    """The array tasks to run again: of the launch's first attempt, those whose unit has no done marker."""
    spec = str(job.history[0]["array"]) if job.history and job.history[0].get("array") else job.array or ""
    tasks = backend.array_tasks(spec)
    if job.job_type == "traces":
        tasks = [t for t in tasks if not _chunk_done(experiment_dir, job.array_first + t)]
    return tasks


def plan_retry(backend: Backend, experiment_dir: Path, manifest: Manifest) -> tuple[list[str], dict[str, list[int]]]:
    """The job keys to submit again, and the array tasks of each array among them."""
    from hpc.status import ended_well

    again = [j.key for j in manifest.jobs if not ended_well(j)]
    work = {"tasks", "traces"}
    if any(manifest.job(k).job_type in work for k in again):
        again += [j.key for j in manifest.jobs if j.job_type in ("server", "cleanup")]
    arrays = {j.key: _tasks(backend, experiment_dir, j) for j in manifest.jobs if j.key in again and j.array}
    again = [j.key for j in manifest.jobs if j.key in again and (not j.array or arrays[j.key])]
    return again, {k: v for k, v in arrays.items() if v}


def retry(experiment_dir: Path, wait: bool) -> int:
    from hpc.status import record, wait_and_report

    manifest = manifests.read(experiment_dir)
    if not manifest.submitted and manifest.dry_run:
        raise LaunchError(f"{experiment_dir} is a dry run: nothing was submitted to retry; launch it without --dry_run")
    backend = backends.get(manifest.backend)
    if manifest.submitted:
        record(manifest, backend.query(manifest.submitted))
    busy = [j for j in manifest.submitted if not j.state.done]
    if busy:
        raise LaunchError(f"{', '.join(f'{j.key} ({j.job_id})' for j in busy)} still queued or running; wait "
                          f"(hpc-launch status {experiment_dir} --wait) or cancel (hpc-launch cancel {experiment_dir}) first")
    keys, tasks = plan_retry(backend, experiment_dir, manifest)
    if not keys:
        print(f"hpc-launch: nothing to retry: every job of {experiment_dir.name} completed")
        return 0
    if any(manifest.job(k).job_type == "train" for k in keys):
        (experiment_dir / "state").mkdir(exist_ok=True)
        (experiment_dir / "state" / "train.resume").touch()
    manifest.attempts += 1
    backend.resubmit(experiment_dir, manifest, keys, tasks)
    print(f"hpc-launch: attempt {manifest.attempts} of {experiment_dir.name}:")
    for key in keys:
        job = manifest.job(key)
        print(f"  {key}: job {job.job_id}" + (f" (tasks {job.array})" if job.array else ""))
    return wait_and_report(experiment_dir) if wait else 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("experiment_dir", type=Path, metavar="EXPERIMENT")
    p.add_argument("--wait", action="store_true", help="wait for the resubmitted jobs and report how they ended")
