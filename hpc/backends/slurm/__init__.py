"""The SLURM backend: sbatch scripts, `sbatch --test-only` checks, `sbatch --parsable` submissions, one sacct (and
at most one squeue) per status query, scancel. The only place that runs SLURM commands at launch."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from pathlib import Path

from hpc.backends import JobStatus, Materialized
from hpc.backends.slurm import commands as cmd
from hpc.backends.slurm.script import render
from hpc.context import Limits
from hpc.errors import LaunchError, SlurmError
from hpc.manifest import JobRecord, Manifest, State
from hpc.spec import PROGRAMS, Plan


def run(argv: list[str], timeout: float = 60, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout,
                              env=cmd.submit_env())
    except FileNotFoundError:
        raise SlurmError(f"{argv[0]} is not installed here; run this on a SLURM login node (or use --dry_run)") from None
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{' '.join(argv[:3])} did not answer within {timeout:.0f} s; the controller may be overloaded") from None


class Backend:
    name = "slurm"

    def limits(self, dry_run: bool) -> Limits:
        """MaxArraySize from `scontrol show config` (SLURM's default in a dry run, which asks SLURM nothing)."""
        if dry_run:
            return Limits(max_array_size=cmd.DEFAULT_MAX_ARRAY_SIZE)
        proc = run(["scontrol", "show", "config"])
        match = re.search(r"^MaxArraySize\s*=\s*(\d+)", proc.stdout, re.MULTILINE)
        return Limits(max_array_size=int(match.group(1)) if proc.returncode == 0 and match
                      else cmd.DEFAULT_MAX_ARRAY_SIZE)

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
            from hpc.profiles import slurm_cluster_name

            here = slurm_cluster_name()
            if here not in plan.profile.slurm_cluster_names:
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
                    raise SlurmError(f"sbatch --test-only could not check job {job.key!r}: {reason}")
                raise LaunchError(f"sbatch --test-only refused job {job.key!r}: {reason}")

    def submit(self, plan: Plan, materialized: Materialized, manifest: Manifest) -> None:
        """One `sbatch --parsable` per job, in order; if SLURM refuses one, the jobs already submitted are
        cancelled and the manifest says which."""
        job_ids: dict[str, str] = {}
        for job in plan.jobs:
            record = manifest.job(job.key)
            argv = cmd.sbatch_argv(plan.experiment_dir / materialized.scripts[job.key], job.dependencies, job_ids,
                                   materialized.arrays.get(job.key))
            proc = run(argv)
            if proc.returncode != 0:
                record.state, record.submit_argv = State.SUBMIT_FAILED, argv
                record.error = cmd.slurm_message(proc.stdout, proc.stderr, proc.returncode)
                undone = self._roll_back(manifest, list(job_ids), job.key)
                manifest.write()
                raise SlurmError(f"sbatch refused job {job.key!r}: {record.error}{undone}")
            job_ids[job.key] = proc.stdout.strip().split(";")[0]
            record.submitted(job_ids[job.key], argv)
            manifest.write()

    def _roll_back(self, manifest: Manifest, keys: list[str], refused: str) -> str:
        if not keys:
            return ""
        if not self.cancel([manifest.job(k).job_id or "" for k in keys]):
            return f"; cancelling the {len(keys)} job(s) already submitted failed: cancel them with scancel"
        for key in keys:
            record = manifest.job(key)
            record.state, record.reason = State.CANCELLED, f"cancelled by the launcher: {refused} was refused"
        return f"; cancelled the {len(keys)} job(s) already submitted"

    def cancel(self, job_ids: Sequence[str]) -> bool:
        return not job_ids or run(["scancel", *job_ids]).returncode == 0

    def query(self, jobs: Sequence[JobRecord]) -> dict[str, JobStatus]:
        """One sacct call for every job and array task, and one squeue only for jobs accounting has not seen."""
        arrays = {j.job_id: j.array_size for j in jobs if j.job_id and j.array_size}
        ids = [j.job_id for j in jobs if j.job_id]
        proc = run(cmd.sacct_argv(ids))
        if proc.returncode != 0:
            raise SlurmError(f"sacct failed: {cmd.slurm_message(proc.stdout, proc.stderr, proc.returncode)}")
        rows = cmd.parse_sacct(proc.stdout)
        missing = [j for j in ids if cmd.combine(j, rows, arrays.get(j)) is None]
        if missing:
            proc = run(cmd.squeue_argv(missing))
            rows.update(cmd.parse_squeue(proc.stdout) if proc.returncode == 0 else {})
        found = {j: row for j in ids if (row := cmd.combine(j, rows, arrays.get(j))) is not None}
        return {j: JobStatus(j, cmd.to_state(r.state), r.state, r.exit_code, r.elapsed) for j, r in found.items()}

    def log_path(self, experiment_dir: Path, job: JobRecord) -> Path:
        """%x_%j.out; for arrays %x_%A_%a.out (the newest task's log)."""
        logs = experiment_dir / "logs"
        if job.array:
            found = sorted(logs.glob(f"{job.name}_{job.job_id}_*.out"), key=lambda p: p.stat().st_mtime)
            return found[-1] if found else logs / "missing"
        return logs / f"{job.name}_{job.job_id}.out"
