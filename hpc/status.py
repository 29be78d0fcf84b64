"""`python -m hpc.status EXPERIMENT_DIR [--wait]`: how the jobs of a launch are doing, in one query."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

from hpc import backends
from hpc import manifest as manifests
from hpc.backends import Backend, JobStatus
from hpc.errors import LaunchError, SlurmError, run_reporting
from hpc.manifest import JobRecord, Manifest, State


def _submitted(manifest: Manifest) -> list[JobRecord]:
    jobs = manifest.submitted
    if not jobs:
        raise LaunchError("this experiment has no submitted jobs (was it a dry run?)")
    return jobs


def _record(manifest: Manifest, states: dict[str, JobStatus]) -> None:
    """Store the latest states in the manifest and print one line per job."""
    for record in manifest.jobs:
        status = states.get(record.job_id or "")
        if status:
            record.state, record.backend_state = status.state, status.backend_state
            record.exit_code, record.elapsed = status.exit_code, status.elapsed
        failed = [d["job"] for d in record.dependencies if d.get("job") and d["kind"] == "afterok"
                  and manifest.job(d["job"]).state not in (State.COMPLETED, State.PENDING, State.RUNNING)]
        if failed and record.state in (State.CANCELLED, State.PENDING):
            record.reason = f"not run: {failed[0]} ended {manifest.job(failed[0]).state}"
        print(f"  {record.key:<12} {record.job_id or '-':>10}  {record.state:<12} "
              f"{record.exit_code or ''} {record.elapsed or ''} {record.reason or ''}".rstrip())
    manifest.write()


def ended_well(record: JobRecord) -> bool:
    """COMPLETED, or an inference server that the launch's cleanup job cancelled when the work was done."""
    return record.state == State.COMPLETED or (record.job_type == "server" and record.state == State.CANCELLED)


def _print_log_tails(backend: Backend, experiment_dir: Path, manifest: Manifest) -> None:
    """The end of each job's log: the result on success, the reason on failure."""
    for record in manifest.submitted:
        path = backend.log_path(experiment_dir, record)
        if not path.exists():
            continue
        lines = path.read_text(errors="replace").splitlines()[-(8 if ended_well(record) else 30):]
        print(f"--- {record.key}: last lines of {path}")
        print("\n".join(lines))


def wait(backend: Backend, jobs: list[JobRecord], timeout: float | None = None, first_poll: float = 2.0,
         max_poll: float = 60.0, on_change: Callable[[dict[str, JobStatus]], None] | None = None) -> dict[str, JobStatus]:
    """Poll (one batched query each time) until every job has ended, backing off from first_poll to max_poll s."""
    deadline = None if timeout is None else time.monotonic() + timeout
    interval = first_poll
    last: dict[str, JobStatus] = {}
    ids = [j.job_id or "" for j in jobs]
    while True:
        states = backend.query(jobs)
        if on_change and states != last:
            on_change(states)
        last = states
        if all(j in states and states[j].state.done for j in ids):
            return states
        if deadline is not None and time.monotonic() > deadline:
            raise SlurmError(f"jobs {', '.join(ids)} not finished after {timeout:.0f} s")
        time.sleep(interval)
        interval = min(max_poll, interval * 1.5)


def wait_and_report(experiment_dir: Path, first_poll: float = 2.0) -> int:
    """Wait for every job of the launch; 0 when all COMPLETED, 1 otherwise."""
    manifest = manifests.read(experiment_dir)
    backend = backends.get(manifest.backend)
    jobs = _submitted(manifest)
    shown: dict[str, State] = {}

    def show_changes(states: dict[str, JobStatus]) -> None:
        for record in jobs:
            status = states.get(record.job_id or "")
            if status and shown.get(record.key) != status.state:
                shown[record.key] = status.state
                print(f"  {record.key}: {status.state}", flush=True)

    states = wait(backend, jobs, first_poll=first_poll, on_change=show_changes)
    _record(manifest, states)
    _print_log_tails(backend, experiment_dir, manifest)
    return 0 if all(ended_well(r) for r in manifest.submitted) else 1


def show(experiment_dir: Path, wait_for_end: bool) -> int:
    if wait_for_end:
        return wait_and_report(experiment_dir)
    manifest = manifests.read(experiment_dir)
    _record(manifest, backends.get(manifest.backend).query(_submitted(manifest)))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hpc.status", description=__doc__)
    p.add_argument("experiment_dir", type=Path)
    p.add_argument("--wait", action="store_true", help="wait until every job has ended")
    args = p.parse_args(argv)
    return run_reporting("hpc.status", lambda: show(args.experiment_dir, args.wait))


if __name__ == "__main__":
    sys.exit(main())
