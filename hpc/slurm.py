"""Talking to SLURM: submit a plan (sbatch argv lists), cancel, and batched status queries.

Command builders are plain functions; the few functions that run commands are small and
take the whole launch at once: one sbatch per job, one sacct (plus at most one squeue) per poll.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from hpc.errors import SlurmError
from hpc.plan import MANIFEST, Dependency, LaunchPlan, utc_now, write_json

TERMINAL = {
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
    "PREEMPTED", "BOOT_FAIL", "DEADLINE", "REVOKED",
}  # fmt: skip
_SACCT_FIELDS = "JobID,JobName,State,ExitCode,Elapsed"
DEFAULT_MAX_ARRAY_SIZE = 1001


def submit_env(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The environment sbatch runs with: SBATCH_*/SLURM_* input variables would override the
    script's #SBATCH lines (and leak from an enclosing allocation), so they are dropped."""
    prefixes = ("SBATCH_", "SLURM_", "SALLOC_", "SRUN_", "PMIX_", "PMI_")
    return {k: v for k, v in environ.items() if not k.startswith(prefixes) or k == "SLURM_CONF"}


def dependency_option(deps: Iterable[Dependency], job_ids: Mapping[str, str]) -> str | None:
    """`--dependency=afterok:1:2,afterany:3` from a job's dependencies (all must hold)."""
    by_kind: dict[str, list[str]] = {}
    for dep in deps:
        target = dep.slurm_job_id if dep.slurm_job_id else job_ids[dep.job or ""]
        by_kind.setdefault(dep.kind, []).append(target)
    if not by_kind:
        return None
    return "--dependency=" + ",".join(":".join([kind, *ids]) for kind, ids in by_kind.items())


def sbatch_argv(script: Path, deps: Iterable[Dependency] = (), job_ids: Mapping[str, str] = {},
                array: str | None = None) -> list[str]:
    option = dependency_option(deps, job_ids)
    return ["sbatch", "--parsable", *([f"--array={array}"] if array else []), *([option] if option else []),
            str(script)]


def _run(argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=submit_env())
    except FileNotFoundError:
        raise SlurmError(f"{argv[0]} is not installed here; run this on a SLURM login node (or use --dry_run)") from None
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{' '.join(argv[:3])} did not answer within {timeout:.0f} s; the controller may be overloaded") from None


def _slurm_message(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
    return "; ".join(dict.fromkeys(ln.removeprefix("sbatch: error: ") for ln in lines)) or f"exit code {proc.returncode}"


def submit(plan: LaunchPlan, manifest: dict) -> dict:
    """Submit every job in order, recording ids in the manifest as they come.

    Atomic: if one sbatch fails, the jobs already submitted for this launch are cancelled.
    """
    path = plan.experiment_dir / MANIFEST
    job_ids: dict[str, str] = {}
    records = {r["key"]: r for r in manifest["jobs"]}
    for job in plan.jobs:
        argv = sbatch_argv(plan.experiment_dir / job.script_path, job.dependencies, job_ids, job.array)
        proc = _run(argv)
        record = records[job.key]
        record["sbatch_argv"] = argv
        if proc.returncode != 0:
            record["state"] = "submit_failed"
            record["error"] = _slurm_message(proc)
            cancelled = cancel(list(job_ids.values()))
            for key in job_ids:
                records[key]["state"] = "cancelled_by_launcher" if cancelled else records[key]["state"]
            write_json(path, manifest)
            undone = f"; cancelled the {len(job_ids)} job(s) already submitted" if job_ids else ""
            raise SlurmError(f"sbatch refused job {job.key!r}: {record['error']}{undone}")
        job_ids[job.key] = proc.stdout.strip().split(";")[0]
        record.update(slurm_job_id=job_ids[job.key], submitted_at=utc_now(), state="submitted")
        write_json(path, manifest)
    return manifest


def cancel(job_ids: list[str]) -> bool:
    """One scancel for all the given jobs; True when SLURM accepted it."""
    return not job_ids or _run(["scancel", *job_ids]).returncode == 0


@dataclass(frozen=True)
class JobState:
    job_id: str
    name: str
    state: str  # SLURM state word: PENDING, RUNNING, COMPLETED, FAILED, ...
    exit_code: str = ""
    elapsed: str = ""

    @property
    def done(self) -> bool:
        return self.state in TERMINAL


def sacct_argv(job_ids: Iterable[str]) -> list[str]:
    return ["sacct", "-X", "-n", "-P", f"--format={_SACCT_FIELDS}", "-j", ",".join(job_ids)]


def parse_sacct(text: str) -> dict[str, JobState]:
    states: dict[str, JobState] = {}
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) != 5:
            continue
        job_id, name, state, exit_code, elapsed = parts
        states[job_id] = JobState(job_id, name, state.split()[0] if state else "UNKNOWN", exit_code, elapsed)
    return states


def parse_squeue(text: str) -> dict[str, JobState]:
    states: dict[str, JobState] = {}
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) == 3:
            states[parts[0]] = JobState(parts[0], parts[1], parts[2])
    return states


def array_size(spec: str) -> int:
    """Number of tasks of an --array spec such as "0-4%2" or "1,4,7-9"."""
    count = 0
    for part in spec.split("%")[0].split(","):
        first, _, last = part.partition("-")
        count += int(last or first) - int(first) + 1
    return count


def combine(job_id: str, rows: Mapping[str, JobState], tasks: int | None = None) -> JobState | None:
    """One state for a job, or for an array of `tasks` tasks (rows 123_0, 123_[2-4%2], ...).

    An array is done only when every one of its tasks has a terminal row: accounting can list an
    array's records one by one, so a partial list must not look finished.
    """
    if tasks is None:
        return rows.get(job_id)
    mine = [state for key, state in rows.items() if key.startswith(f"{job_id}_")]
    if not mine:
        return None
    name = mine[0].name
    finished = [(s, _covers(s.job_id.removeprefix(f"{job_id}_"))) for s in mine if s.done]
    if sum(n for _, n in finished) < tasks:
        return JobState(job_id, name, "RUNNING" if any(s.state == "RUNNING" for s in mine) else "PENDING")
    bad = [s for s, _ in finished if s.state != "COMPLETED"]
    ok = sum(n for s, n in finished if s.state == "COMPLETED")
    summary = f"{ok}/{tasks} tasks COMPLETED"
    return JobState(job_id, name, bad[0].state if bad else "COMPLETED", bad[0].exit_code if bad else "0:0", summary)


def _covers(index: str) -> int:
    """Array tasks one accounting row stands for: "3" is one, "[0-4%2]" (never started) is five."""
    return 1 if index.isdigit() else array_size(index.strip("[]"))


def query(job_ids: list[str], arrays: Mapping[str, int] = {}) -> dict[str, JobState]:
    """States of many jobs and arrays (job id -> number of tasks): one sacct call, and one squeue only
    for jobs accounting has not seen yet."""
    proc = _run(sacct_argv(job_ids))
    if proc.returncode != 0:
        raise SlurmError(f"sacct failed: {_slurm_message(proc)}")
    rows = parse_sacct(proc.stdout)
    missing = [j for j in job_ids if combine(j, rows, arrays.get(j)) is None]
    if missing:
        proc = _run(["squeue", "-h", "-t", "all", "-o", "%i|%j|%T", "-j", ",".join(missing)])
        rows.update(parse_squeue(proc.stdout) if proc.returncode == 0 else {})
    return {j: state for j in job_ids if (state := combine(j, rows, arrays.get(j))) is not None}


def max_array_size(dry_run: bool = False) -> int:
    """MaxArraySize from `scontrol show config` (SLURM's default in a dry run, which asks SLURM nothing)."""
    if dry_run:
        return DEFAULT_MAX_ARRAY_SIZE
    proc = _run(["scontrol", "show", "config"])
    match = re.search(r"^MaxArraySize\s*=\s*(\d+)", proc.stdout, re.MULTILINE)
    return int(match.group(1)) if proc.returncode == 0 and match else DEFAULT_MAX_ARRAY_SIZE


def wait(job_ids: list[str], timeout: float | None = None, first_poll: float = 2.0, max_poll: float = 60.0,
         on_change: Callable[[dict[str, JobState]], None] | None = None,
         arrays: Mapping[str, int] = {}) -> dict[str, JobState]:
    """Poll until every job is in a terminal state, backing off from first_poll to max_poll seconds."""
    deadline = None if timeout is None else time.monotonic() + timeout
    interval = first_poll
    last: dict[str, JobState] = {}
    while True:
        states = query(job_ids, arrays)
        if on_change and states != last:
            on_change(states)
        last = states
        if all(j in states and states[j].done for j in job_ids):
            return states
        if deadline is not None and time.monotonic() > deadline:
            raise SlurmError(f"jobs {', '.join(job_ids)} not finished after {timeout:.0f} s")
        time.sleep(interval)
        interval = min(max_poll, interval * 1.5)
