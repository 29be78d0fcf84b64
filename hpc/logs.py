"""`hpc-launch logs EXPERIMENT [JOB] [--task N] [-f]`: a job's log, the first real error on top.

Default job: the first that did not end well, else the last one; default array task: its first failed one.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from hpc import backends
from hpc import manifest as manifests
from hpc.errors import LaunchError
from hpc.status import ended_well, failed_task, first_error, record, submitted


def show(experiment_dir: Path, key: str | None, task: int | None, follow: bool) -> int:
    manifest = manifests.read(experiment_dir)
    backend = backends.get(manifest.backend)
    jobs = submitted(manifest)
    states = backend.query(jobs)
    record(manifest, states)
    if key is None:
        job = next((j for j in jobs if j.state.done and not ended_well(j)), jobs[-1])
    elif key in {j.key for j in jobs}:
        job = manifest.job(key)
    else:
        raise LaunchError(f"no submitted job {key!r} in {experiment_dir}; its jobs: {', '.join(j.key for j in jobs)}")
    if task is not None and not job.array:
        raise LaunchError(f"--task: job {job.key!r} is not an array; drop --task")
    log = backend.log_path(experiment_dir, job, task if task is not None else failed_task(states, job))
    print(f"==> {job.key} (job {job.job_id}, {job.state}): {log}")
    if job.state.done and not ended_well(job):
        print(f"first error: {first_error(log) or 'no error line found'}")
    if not log.exists():
        print("(no log yet: the job has not started)" if not job.state.done else "(no log was written)")
        if not follow:
            return 0
    try:
        return _print(backend, job, log, follow)
    except KeyboardInterrupt:
        return 130


def _print(backend: backends.Backend, job: manifests.JobRecord, log: Path, follow: bool) -> int:
    """Print the log; with follow, keep printing what is appended until the job has ended."""
    offset, last_check = 0, 0.0
    while True:
        if log.exists():
            with open(log, "rb") as stream:
                stream.seek(offset)
                chunk = stream.read()
            offset += len(chunk)
            sys.stdout.write(chunk.decode(errors="replace"))
            sys.stdout.flush()
        if not follow:
            return 0
        if time.monotonic() - last_check > 5:
            last_check = time.monotonic()
            status = backend.query([job]).get(job.job_id or "")
            if status and status.state.done:
                follow = False  # one more read for what was written last
                continue
        time.sleep(1)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("experiment_dir", type=Path, metavar="EXPERIMENT")
    p.add_argument("job", nargs="?", metavar="JOB", help="job key (train, eval, traces, ...)")
    p.add_argument("--task", type=int, help="array task (default: the first failed one, else the newest)")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing while the job runs")
