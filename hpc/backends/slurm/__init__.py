"""The SLURM backend: sbatch scripts, `sbatch --test-only` checks, `sbatch --parsable` submissions, one sacct (and
at most one squeue) per status query, scancel. The only place that runs SLURM commands at launch."""

from __future__ import annotations

import functools
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from hpc.backends import JobStatus, Limits, Materialized
from hpc.backends.slurm import commands as cmd
from hpc.backends.slurm.script import render
from hpc.errors import BackendError, LaunchError
from hpc.manifest import JobRecord, Manifest, State
from hpc.spec import PROGRAMS, Dependency, Plan

if TYPE_CHECKING:
    import subprocess

    from hpc.backends.slurm import accounting as acct


#: Seconds any SLURM command may take before the launcher gives up on it.
TIMEOUT = float(os.environ.get("HPC_LAUNCH_SLURM_TIMEOUT", "60"))


def run(argv: list[str], timeout: float | None = None, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    import subprocess

    timeout = TIMEOUT if timeout is None else timeout
    try:
        return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout,
                              env=cmd.submit_env())
    except FileNotFoundError:
        raise BackendError(f"{argv[0]} is not installed here; run this on a SLURM login node (or use --dry_run)") from None
    except subprocess.TimeoutExpired:
        raise BackendError(f"{' '.join(argv[:3])} did not answer within {timeout:.0f} s; the controller may be overloaded") from None


@functools.cache
def show_config() -> str:
    """`scontrol show config` as text, asked once per process (cluster detection, dry-run validation and the array
    limit all read it); "" where no controller answers within 15 s."""
    try:
        proc = run(["scontrol", "show", "config"], timeout=15)
    except BackendError:
        return ""
    return proc.stdout if proc.returncode == 0 else ""


class Backend:
    name = "slurm"

    def limits(self, dry_run: bool) -> Limits:
        """MaxArraySize from `scontrol show config` (SLURM's default in a dry run, which asks SLURM nothing)."""
        if dry_run:
            return Limits(max_array_size=cmd.DEFAULT_MAX_ARRAY_SIZE)
        match = re.search(r"^MaxArraySize\s*=\s*(\d+)", show_config(), re.MULTILINE)
        return Limits(max_array_size=int(match.group(1)) if match else cmd.DEFAULT_MAX_ARRAY_SIZE)

    def materialize(self, plan: Plan) -> Materialized:
        scripts = {job.key: f"{PROGRAMS}/{job.key}.sbatch" for job in plan.jobs}
        arrays = {job.key: cmd.array_spec(job.array) for job in plan.jobs if job.array}
        placeholders = {job.key: f"<{job.key}>" for job in plan.jobs}
        commands = {job.key: cmd.sbatch_argv(plan.experiment_dir / scripts[job.key], job.dependencies, placeholders,
                                             arrays.get(job.key)) for job in plan.jobs}
        files = {scripts[job.key]: render(job, plan) for job in plan.jobs}
        return Materialized(files=files, scripts=scripts, commands=commands, arrays=arrays)

    def validate(self, plan: Plan, materialized: Materialized, asked: bool | None, dry_run: bool) -> None:
        """`sbatch --test-only` per job, its script on stdin (so nothing needs to be written first): the controller
        checks partition, account, QOS, GRES, time and nodes as the site sees them, and submits nothing.

        asked None: always before a real submission; in a dry run only when this node's controller is the
        profile's cluster. True insists (an error when no such controller answers); False skips."""
        if asked is False:
            return
        if dry_run:
            from hpc.backends.slurm.detect import cluster_name

            here = cluster_name()
            if here not in plan.profile.slurm.cluster_names:
                if asked:
                    raise LaunchError(f"--validate needs a SLURM controller of {plan.cluster}, but "
                                      + (f"this node's is cluster {here!r}" if here else "none answers here")
                                      + f"; run the dry run on a {plan.cluster} login node, or drop --validate")
                return
        for job in plan.jobs:
            proc = run(cmd.validate_argv(materialized.arrays.get(job.key)),
                       stdin=materialized.files[materialized.scripts[job.key]])
            if proc.returncode != 0:
                reason = cmd.refusal_reason(proc.stderr, proc.returncode)
                if cmd.controller_unreachable(proc.stderr):
                    raise BackendError(f"sbatch --test-only could not check job {job.key!r}: {reason}")
                raise LaunchError(f"sbatch --test-only refused job {job.key!r}: {reason}")

    def submit(self, plan: Plan, materialized: Materialized, manifest: Manifest) -> None:
        """One `sbatch --parsable` per job, in order, as one transaction (see hpc/backends/slurm/submit.py)."""
        from hpc.backends.slurm.submit import submit

        submit(plan, materialized, manifest, run, self.cancel)

    def resubmit(self, experiment_dir: Path, manifest: Manifest, keys: Sequence[str],
                 tasks: dict[str, list[int]]) -> None:
        job_ids = {r.key: r.job_id or "" for r in manifest.jobs}
        again = set(keys)
        for record in (r for r in manifest.jobs if r.key in again):
            deps = tuple(Dependency(d["kind"], job=d["job"]) for d in record.dependencies if d.get("job") in again)
            spec = None
            if record.array:
                spec = f"{cmd.ranges(tasks[record.key])}%{record.array.partition('%')[2] or len(tasks[record.key])}"
            argv = cmd.sbatch_argv(Path(record.script), deps, job_ids, spec)
            proc = run(argv)
            if proc.returncode != 0:  # the attempts before stay submitted: the manifest says which
                record.error = cmd.slurm_message(proc.stdout, proc.stderr, proc.returncode)
                record.state = State.SUBMIT_FAILED
                manifest.write()
                raise BackendError(f"sbatch refused job {record.key!r} again: {record.error}")
            record.attempt(proc.stdout.strip().split(";")[0], argv, spec, len(tasks[record.key]) if spec else None)
            job_ids[record.key] = record.job_id or ""
            manifest.write()

    def cancel(self, jobs: Sequence[JobRecord]) -> list[str]:
        """scancel by id, then poll (one batched query each time, up to ~15 s) until none is queued or running."""
        ids = [j.job_id for j in jobs if j.job_id]
        if not ids:
            return []
        run(["scancel", *ids])
        arrays = {j.job_id: j.array_size for j in jobs if j.job_id and j.array_size}
        deadline = time.monotonic() + 15
        while True:
            rows = self._rows(ids, arrays)
            alive = [j for j in ids if j in rows and not rows[j].done]
            if not alive or time.monotonic() > deadline:
                return alive
            time.sleep(0.5)

    def _rows(self, ids: list[str], arrays: dict[str, int]) -> dict[str, acct.Row]:
        from hpc.backends.slurm import accounting as acct

        proc = run(acct.sacct_argv(ids))
        if proc.returncode != 0:
            raise BackendError(f"sacct failed: {cmd.slurm_message(proc.stdout, proc.stderr, proc.returncode)}")
        rows = acct.parse_sacct(proc.stdout)
        if ask := acct.to_explain(ids, rows, arrays):
            proc = run(acct.squeue_argv(ask))
            if proc.returncode == 0:
                rows = acct.with_live(rows, acct.parse_squeue(proc.stdout))
        return {j: row for j in ids if (row := acct.combine(j, rows, arrays.get(j))) is not None}

    def query(self, jobs: Sequence[JobRecord]) -> dict[str, JobStatus]:
        """One sacct call for every job and array task, and one squeue for jobs accounting has not seen
        (and for arrays, whose pending tasks only squeue explains)."""
        arrays = {j.job_id: j.array_size for j in jobs if j.job_id and j.array_size}
        rows = self._rows([j.job_id for j in jobs if j.job_id], arrays)
        return {j: JobStatus(j, cmd.to_state(r.state), r.state, r.exit_code, r.elapsed, r.reason,
                             {str(cmd.to_state(w)): n for w, n in r.tasks.items()}, r.failed_tasks)
                for j, r in rows.items()}

    def array_tasks(self, spec: str) -> list[int]:
        from hpc.backends.slurm import accounting as acct

        return acct.array_indices(spec)

    def log_path(self, experiment_dir: Path, job: JobRecord, task: int | None = None) -> Path:
        """%x_%j.out; for arrays %x_%A_%a.out (task `task`, else the newest task's log)."""
        logs = experiment_dir / "logs"
        if job.array and task is not None:
            return logs / f"{job.name}_{job.job_id}_{task}.out"
        if job.array:
            found = sorted(logs.glob(f"{job.name}_{job.job_id}_*.out"), key=lambda p: p.stat().st_mtime)
            return found[-1] if found else logs / f"{job.name}_{job.job_id}_0.out"
        return logs / f"{job.name}_{job.job_id}.out"
