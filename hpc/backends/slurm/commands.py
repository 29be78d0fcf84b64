"""SLURM command lines and their answers, as plain functions (testable without SLURM)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from hpc.manifest import State
from hpc.spec import Array, Dependency

DEFAULT_MAX_ARRAY_SIZE = 1001
SACCT_FIELDS = "JobID,JobName,State,ExitCode,Elapsed"
#: SLURM's state words -> ours (the rest: REQUEUED, RESIZING, SUSPENDED, ... are still running or pending).
STATES = {
    "PENDING": State.PENDING, "REQUEUED": State.PENDING, "REQUEUE_HOLD": State.PENDING, "REQUEUE_FED": State.PENDING,
    "CONFIGURING": State.RUNNING, "RUNNING": State.RUNNING, "COMPLETING": State.RUNNING, "SUSPENDED": State.RUNNING,
    "RESIZING": State.RUNNING, "STAGE_OUT": State.RUNNING, "SIGNALING": State.RUNNING, "STOPPED": State.RUNNING,
    "COMPLETED": State.COMPLETED, "FAILED": State.FAILED, "BOOT_FAIL": State.FAILED, "DEADLINE": State.TIMEOUT,
    "CANCELLED": State.CANCELLED, "REVOKED": State.CANCELLED, "TIMEOUT": State.TIMEOUT,
    "OUT_OF_MEMORY": State.OUT_OF_MEMORY, "NODE_FAIL": State.NODE_FAIL, "PREEMPTED": State.PREEMPTED,
}  # fmt: skip


def to_state(word: str) -> State:
    return STATES.get(word, State.UNKNOWN)


def submit_env(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The environment sbatch runs with: SBATCH_*/SLURM_* input variables would override the
    script's #SBATCH lines (and leak from an enclosing allocation), so they are dropped."""
    prefixes = ("SBATCH_", "SLURM_", "SALLOC_", "SRUN_", "PMIX_", "PMI_")
    return {k: v for k, v in environ.items() if not k.startswith(prefixes) or k == "SLURM_CONF"}


def dependency_option(deps: Iterable[Dependency], job_ids: Mapping[str, str]) -> str | None:
    """`--dependency=afterok:1:2,afterany:3` from a job's dependencies (all must hold)."""
    by_kind: dict[str, list[str]] = {}
    for dep in deps:
        target = dep.external if dep.external else job_ids[dep.job or ""]
        by_kind.setdefault(dep.kind, []).append(target)
    if not by_kind:
        return None
    return "--dependency=" + ",".join(":".join([kind, *ids]) for kind, ids in by_kind.items())


def array_spec(array: Array) -> str:
    """SLURM's --array value: sorted indices as ranges, then %parallel (e.g. 0-4,7%2)."""
    indices, parts, start = sorted(array.indices), [], None
    for i, index in enumerate(indices):
        if start is None:
            start = index
        if i + 1 == len(indices) or indices[i + 1] != index + 1:
            parts.append(f"{start}-{index}" if index > start else f"{start}")
            start = None
    return f"{','.join(parts)}%{array.parallel}"


def sbatch_argv(script: Path, deps: Iterable[Dependency] = (), job_ids: Mapping[str, str] = {},
                array: str | None = None) -> list[str]:
    option = dependency_option(deps, job_ids)
    return ["sbatch", "--parsable", *([f"--array={array}"] if array else []), *([option] if option else []),
            str(script)]


def validate_argv(array: str | None = None) -> list[str]:
    """`sbatch --test-only`, script on stdin: the controller checks the job and submits nothing. No --dependency:
    the jobs it would name are not submitted yet."""
    return ["sbatch", "--test-only", *([f"--array={array}"] if array else [])]


#: What to check when `sbatch --test-only` refuses for a reason containing the key (first match wins).
REFUSAL_HINTS = (
    ("qos", "check --qos and the limits it sets (time, nodes, GPUs)"),
    ("account", "check --account/--partition"),
    ("partition", "check --partition"),
    ("time limit", "ask for no more time than the partition's MaxTime"),
    ("gres", "check --gpus_per_node and the profile's gpu_request/gpu_type"),
    ("node configuration", "no node has that many GPUs, CPUs or that much memory: check --gpus_per_node and "
                           "the profile's gpus_per_node/cpus_per_node/mem_per_node"),
    ("node count", "check --num_nodes"),
)
_UNREACHABLE = re.compile(r"unable to contact slurm controller|socket timed out|connection refused", re.IGNORECASE)


def refusal_reason(stderr: str, returncode: int) -> str:
    """Why `sbatch --test-only` refused, on one line, with what to check when the reason is a known one."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    for prefix in ("sbatch: error: ", "allocation failure: ", "Batch job submission failed: "):
        lines = [ln.removeprefix(prefix) for ln in lines]
    reason = "; ".join(dict.fromkeys(lines)) or f"exit code {returncode}"
    hint = next((h for key, h in REFUSAL_HINTS if key in reason.lower()), None)
    return f"{reason}; {hint}" if hint else reason


def controller_unreachable(stderr: str) -> bool:
    """The command failed because no controller answered, not because the job was refused."""
    return bool(_UNREACHABLE.search(stderr))


def sacct_argv(job_ids: Iterable[str]) -> list[str]:
    return ["sacct", "-X", "-n", "-P", f"--format={SACCT_FIELDS}", "-j", ",".join(job_ids)]


def squeue_argv(job_ids: Iterable[str]) -> list[str]:
    return ["squeue", "-h", "-t", "all", "-o", "%i|%j|%T", "-j", ",".join(job_ids)]


@dataclass(frozen=True)
class Row:
    """One job (or array task) as sacct or squeue lists it."""

    job_id: str
    name: str
    state: str  # SLURM's word: PENDING, RUNNING, COMPLETED, FAILED, ...
    exit_code: str = ""
    elapsed: str = ""

    @property
    def done(self) -> bool:
        return to_state(self.state).done


def parse_sacct(text: str) -> dict[str, Row]:
    rows: dict[str, Row] = {}
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) != 5:
            continue
        job_id, name, state, exit_code, elapsed = parts
        rows[job_id] = Row(job_id, name, state.split()[0] if state else "UNKNOWN", exit_code, elapsed)
    return rows


def parse_squeue(text: str) -> dict[str, Row]:
    rows: dict[str, Row] = {}
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) == 3:
            rows[parts[0]] = Row(parts[0], parts[1], parts[2])
    return rows


def array_size(spec: str) -> int:
    """Number of tasks of an --array spec such as "0-4%2" or "1,4,7-9"."""
    count = 0
    for part in spec.split("%")[0].split(","):
        first, _, last = part.partition("-")
        count += int(last or first) - int(first) + 1
    return count


def combine(job_id: str, rows: Mapping[str, Row], tasks: int | None = None) -> Row | None:
    """One row for a job, or for an array of `tasks` tasks (rows 123_0, 123_[2-4%2], ...).

    An array is done only when every one of its tasks has a terminal row: accounting can list an
    array's records one by one, so a partial list must not look finished.
    """
    if tasks is None:
        return rows.get(job_id)
    mine = [row for key, row in rows.items() if key.startswith(f"{job_id}_")]
    if not mine:
        return None
    name = mine[0].name
    finished = [(r, _covers(r.job_id.removeprefix(f"{job_id}_"))) for r in mine if r.done]
    if sum(n for _, n in finished) < tasks:
        return Row(job_id, name, "RUNNING" if any(r.state == "RUNNING" for r in mine) else "PENDING")
    bad = [r for r, _ in finished if r.state != "COMPLETED"]
    ok = sum(n for r, n in finished if r.state == "COMPLETED")
    summary = f"{ok}/{tasks} tasks COMPLETED"
    return Row(job_id, name, bad[0].state if bad else "COMPLETED", bad[0].exit_code if bad else "0:0", summary)


def _covers(index: str) -> int:
    """Array tasks one accounting row stands for: "3" is one, "[0-4%2]" (never started) is five."""
    return 1 if index.isdigit() else array_size(index.strip("[]"))


def slurm_message(stdout: str, stderr: str, returncode: int) -> str:
    """SLURM's complaint on one line."""
    lines = [ln.strip() for ln in (stderr or stdout).splitlines() if ln.strip()]
    return "; ".join(dict.fromkeys(ln.removeprefix("sbatch: error: ") for ln in lines)) or f"exit code {returncode}"
