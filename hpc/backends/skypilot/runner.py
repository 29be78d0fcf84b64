"""A SkyPilot launch from start to end: the jobs one after another on one cluster (the first launches it unless it is
up; the others exec), each followed to its end, outputs synced back before any teardown; --timeout_minutes and
Ctrl-C cancel what runs, and --down tears the cluster down however the launch ends."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from hpc.backends import Materialized
from hpc.backends.skypilot import lifecycle
from hpc.backends.skypilot.task import Cloud
from hpc.manifest import JobRecord, Manifest, State
from hpc.spec import Plan


def say(text: str) -> None:
    print(f"hpc-launch: {text}", flush=True)


def _sync(cloud: Cloud, plan: Plan, job_type: str) -> None:
    """Outputs back before any teardown: $HPC_OUTPUT_DIR to --local-sync-dir, and (for jobs that write into the
    experiment, mounted at the same path) the experiment's own files."""
    why = lifecycle.sync_back(cloud.cluster, f"sky_workdir/{cloud.output_subdir}", cloud.local_sync_dir)
    if why is None:
        say(f"outputs synced to {cloud.local_sync_dir}")
    else:
        say(f"no outputs synced from ~/sky_workdir/{cloud.output_subdir}: {why}")
    if job_type != "run":
        why = lifecycle.sync_back(cloud.cluster, str(plan.experiment_dir), plan.experiment_dir,
                                  exclude=("manifest.json", "logs/", "sky/"))
        if why is not None:
            say(f"the experiment's files were not synced back: {why}")


def _finish(record: JobRecord, cluster: str, job_id: int, log: Path) -> None:
    word = (lifecycle.job_states(cluster, [job_id]) or {}).get(job_id, "UNKNOWN")
    record.state, record.backend_state = lifecycle.STATES.get(word, State.UNKNOWN), word
    record.exit_code = lifecycle.real_exit_code(log, word)
    skypilot_says = "" if record.state == State.COMPLETED else " (SkyPilot reports 100 for any failure)"
    say(f"{record.key}: {record.state}, exit code {record.exit_code or 'unknown'}{skypilot_says}")


def run_jobs(plan: Plan, materialized: Materialized, manifest: Manifest, cloud: Cloud, secrets: dict[str, str],
             log_path: Callable[[Path, JobRecord], Path]) -> None:
    """Run every job of the plan and record how each ended; raises lifecycle.Interrupted on Ctrl-C."""
    deadline = time.monotonic() + cloud.timeout_minutes * 60 if cloud.timeout_minutes else None
    session = lifecycle.Session(cloud.cluster, deadline)
    reuse = lifecycle.cluster_up(cloud.cluster)
    say(f"{'reusing' if reuse else 'launching'} SkyPilot cluster {cloud.cluster}"
        + (" (torn down at the end: --down)" if cloud.down else ""))
    current: JobRecord | None = None
    job_id: int | None = None
    ended: JobRecord | None = None
    try:
        for job in plan.jobs:
            record = manifest.job(job.key)
            if ended is not None and ended.state != State.COMPLETED:
                record.reason = f"not run: {ended.key} ended {ended.state}"
                manifest.write()
                continue
            current, job_id = record, None
            config = yaml.safe_load(materialized.files[materialized.scripts[job.key]])
            job_id = session.start(config, secrets, reuse=reuse, down=cloud.down)
            reuse = True
            record.submitted(f"{cloud.cluster}/{job_id}", materialized.commands[job.key])
            manifest.write()
            log = log_path(plan.experiment_dir, record)
            if not session.follow(job_id, log):
                raise TimeoutError
            _finish(record, cloud.cluster, job_id, log)
            manifest.write()
            _sync(cloud, plan, job.job_type)
            ended, current = record, None
    except TimeoutError:
        session.cancel_request()
        if current is not None:
            if job_id is not None:
                lifecycle.cancel(cloud.cluster, [job_id])
            current.state, current.backend_state = State.TIMEOUT, "CANCELLED"
            current.reason = f"cancelled after --timeout_minutes {cloud.timeout_minutes:g}"
            manifest.write()
            say(f"{current.key}: {current.reason}")
    except KeyboardInterrupt:
        with lifecycle.ignore_interrupts():
            session.cancel_request()
            if current is not None and cloud.down:
                if job_id is not None:
                    lifecycle.cancel(cloud.cluster, [job_id])
                current.state, current.reason = State.CANCELLED, "cancelled by Ctrl-C (--down)"
            elif current is not None:
                current.reason = "Ctrl-C stopped following it; it keeps running"
            manifest.write()
        raise lifecycle.Interrupted(
            "interrupted" + (f"; follow it with: hpc-launch status {plan.experiment_dir}" if not cloud.down else "")
        ) from None
    finally:
        if cloud.down:
            with lifecycle.ignore_interrupts():
                say(f"tearing down {cloud.cluster} (--down)")
                why = lifecycle.down(cloud.cluster)
                if why:
                    print(f"hpc-launch: error: tearing down {cloud.cluster} failed: {why}; run: sky down "
                          f"{cloud.cluster}", file=sys.stderr)
