"""`hpc-launch status EXPERIMENT [--wait] [--json]` (also `python -m hpc.status`): how the jobs of a launch
are doing, one batched query per look.

Exit codes: 0 every job COMPLETED, 1 any failed or was cancelled, 3 still running.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

from hpc import backends
from hpc import manifest as manifests
from hpc.backends import Backend, JobStatus
from hpc.errors import BackendError, LaunchError, run_reporting
from hpc.manifest import JobRecord, Manifest, State

RUNNING = 3


#: A Python exception line (what a traceback ends with), possibly prefixed by torchrun's "[rankN]:".
_EXCEPTION = re.compile(r"^(?:\[rank\d+\]:\s*)?(?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception)(?::\s.*)?$")
#: Error lines of SLURM, shells and the launcher's own job scripts.
_ERROR = re.compile(r"(^|\s)(error|fatal):|\*\*\* .*(CANCELLED|DUE TO TIME LIMIT)", re.IGNORECASE)


def first_error(log: Path) -> str | None:
    """The first line that says what went wrong: a Python exception if any (the one torchrun's summary
    repeats 150 lines later), else the first error line, else the last line the job's program printed."""
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return None
    for pattern in (_EXCEPTION, _ERROR):
        found = next((ln for ln in lines if pattern.search(ln)), None)
        if found:
            return found
    return next((ln for ln in reversed(lines) if not ln.startswith("[hpc-launch]")), None)


def submitted(manifest: Manifest) -> list[JobRecord]:
    jobs = manifest.submitted
    if not jobs:
        raise LaunchError("this experiment has no submitted jobs (was it a dry run?); launch it without --dry_run")
    return jobs


def ended_well(record: JobRecord) -> bool:
    """COMPLETED, or an inference server that the launch's cleanup job cancelled when the work was done."""
    return record.state == State.COMPLETED or (record.job_type == "server" and record.state == State.CANCELLED)


def record(manifest: Manifest, states: dict[str, JobStatus]) -> None:
    """Store the latest states in the manifest (and why a dependent did not run)."""
    for job in manifest.jobs:
        status = states.get(job.job_id or "")
        if status:
            job.state, job.backend_state = status.state, status.backend_state
            job.exit_code, job.elapsed = status.exit_code, status.elapsed
            if job.state == State.PENDING and status.reason:
                job.reason = f"pending: {status.reason}"
        failed = [d["job"] for d in job.dependencies if d.get("job") and d["kind"] == "afterok"
                  and manifest.job(d["job"]).state.done and manifest.job(d["job"]).state != State.COMPLETED]
        if failed and job.state in (State.CANCELLED, State.PENDING):
            job.reason = f"not run: {failed[0]} ended {manifest.job(failed[0]).state}"
    manifest.write()


def exit_code(manifest: Manifest) -> int:
    """RUNNING while a submitted job is not over; then 0 only if every job of the experiment ran and ended well (a
    job that was never submitted, e.g. after a refused sbatch, makes it 1)."""
    jobs = manifest.submitted
    if any(not j.state.done for j in jobs):
        return RUNNING
    return 0 if len(jobs) == len(manifest.jobs) and all(ended_well(j) for j in jobs) else 1


def table(manifest: Manifest, states: dict[str, JobStatus], backend: Backend) -> str:
    lines = [f"{'job':<12} {'id':>10}  {'state':<13} {'elapsed':<10} {'exit':<5} details"]
    for job in manifest.jobs:
        status = states.get(job.job_id or "")
        tasks = ", ".join(f"{n} {s}" for s, n in sorted(status.tasks.items())) if status and status.tasks else ""
        log = backend.log_path(Path(manifest.experiment_dir), job) if job.job_id else None
        details = "; ".join(x for x in (tasks, job.reason or "", f"log {log}" if log else "") if x)
        elapsed = "" if job.array else (job.elapsed or "")
        lines.append(f"{job.key:<12} {job.job_id or '-':>10}  {job.state:<13} {elapsed:<10} "
                     f"{job.exit_code or '':<5} {details}".rstrip())
    return "\n".join(lines)


def as_json(manifest: Manifest, states: dict[str, JobStatus], backend: Backend) -> str:
    rows = []
    for job in manifest.jobs:
        status = states.get(job.job_id or "")
        rows.append({"key": job.key, "job_id": job.job_id, "state": str(job.state), "backend_state": job.backend_state,
                     "reason": job.reason, "elapsed": job.elapsed, "exit_code": job.exit_code,
                     "tasks": status.tasks if status else {},
                     "log": str(backend.log_path(Path(manifest.experiment_dir), job)) if job.job_id else None})
    return json.dumps({"experiment": manifest.experiment_dir, "exit_code": exit_code(manifest), "jobs": rows}, indent=2)


def poll(backend: Backend, jobs: list[JobRecord], first_poll: float = 2.0, max_poll: float = 60.0,
         on_change: Callable[[dict[str, JobStatus]], None] | None = None,
         heartbeat: Callable[[dict[str, JobStatus]], None] | None = None,
         clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> dict[str, JobStatus]:
    """Poll (one batched query each time) until every job has ended, backing off from first_poll to max_poll s.

    A failing query (a restarting controller, a busy accounting database) is retried with backoff: the jobs
    go on, so the wait does too. With nothing new, `heartbeat` is called at growing intervals (30 s .. 10 min).
    """
    interval, last, failures = first_poll, {}, 0
    beat_every, next_beat = 30.0, clock() + 30.0
    ids = [j.job_id or "" for j in jobs]
    while True:
        try:
            states = backend.query(jobs)
            failures = 0
        except BackendError as exc:
            failures += 1
            print(f"hpc-launch: {exc}; the jobs go on, asking again in {interval:.0f} s (failure {failures})",
                  file=sys.stderr, flush=True)
            sleep(interval)
            interval = min(max_poll, interval * 1.5)
            continue
        if states != last:
            if on_change:
                on_change(states)
            next_beat = clock() + beat_every
        elif heartbeat and clock() >= next_beat:
            heartbeat(states)
            beat_every = min(600.0, beat_every * 2)
            next_beat = clock() + beat_every
        last = states
        if all(j in states and states[j].state.done for j in ids):
            return states
        sleep(interval)
        interval = min(max_poll, interval * 1.5)


def wait_and_report(experiment_dir: Path, first_poll: float = 2.0) -> int:
    """Wait for every job of the launch; 0 when all COMPLETED, 1 otherwise, 130 on Ctrl-C (the jobs go on)."""
    manifest = manifests.read(experiment_dir)
    backend = backends.get(manifest.backend)
    jobs = submitted(manifest)
    shown: dict[str, State] = {}

    def show_changes(states: dict[str, JobStatus]) -> None:
        for job in jobs:
            status = states.get(job.job_id or "")
            if status and shown.get(job.key) != status.state:
                shown[job.key] = status.state
                print(f"  {job.key}: {status.state}", flush=True)

    def heartbeat(states: dict[str, JobStatus]) -> None:
        waiting = [f"{j.key} {s.state}{f' ({s.reason})' if s.reason else ''}" for j in jobs
                   if (s := states.get(j.job_id or "")) and not s.state.done]
        print(f"  [{time.strftime('%H:%M:%S')}] still waiting: {', '.join(waiting)}", flush=True)

    try:
        states = poll(backend, jobs, first_poll=first_poll, on_change=show_changes, heartbeat=heartbeat)
    except KeyboardInterrupt:
        print(f"\nhpc-launch: stopped waiting; the jobs keep running. Follow them with: "
              f"hpc-launch status {experiment_dir} --wait", file=sys.stderr)
        return 130
    record(manifest, states)
    print(table(manifest, states, backend))
    for job in manifest.submitted:
        log = backend.log_path(experiment_dir, job, failed_task(states, job))
        if not log.exists():
            continue
        lines = log.read_text(errors="replace").splitlines()
        print(f"--- {job.key}: last lines of {log}")
        if not ended_well(job):
            print(f"first error: {first_error(log) or 'no error line found'}")
        print("\n".join(lines[-(8 if ended_well(job) else 30):]))
    return 0 if all(ended_well(j) for j in manifest.submitted) else 1


def failed_task(states: dict[str, JobStatus], job: JobRecord) -> int | None:
    status = states.get(job.job_id or "")
    return status.failed_tasks[0] if status and status.failed_tasks else None


def show(experiment_dir: Path, wait_for_end: bool = False, as_json_output: bool = False) -> int:
    if wait_for_end:
        return wait_and_report(experiment_dir)
    manifest = manifests.read(experiment_dir)
    backend = backends.get(manifest.backend)
    states = backend.query(submitted(manifest))
    record(manifest, states)
    print(as_json(manifest, states, backend) if as_json_output else table(manifest, states, backend))
    return exit_code(manifest)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("experiment_dir", type=Path, metavar="EXPERIMENT", help="the experiment directory")
    p.add_argument("--wait", action="store_true", help="wait until every job has ended")
    p.add_argument("--json", action="store_true", help="print the table as JSON")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="hpc-status", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    args = p.parse_args(argv)
    return run_reporting("hpc-status", lambda: show(args.experiment_dir, args.wait, args.json))


if __name__ == "__main__":
    sys.exit(main())
