"""SLURM command lines and their answers, as plain functions (testable without SLURM)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from hpc.manifest import State
from hpc.spec import Array, Dependency

DEFAULT_MAX_ARRAY_SIZE = 1001
#: SLURM's state words -> ours.
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


def ranges(indices: Iterable[int]) -> str:
    """Sorted indices in SLURM's array syntax: 0-4,7,9-11."""
    ordered, parts, start = sorted(indices), [], None
    for i, index in enumerate(ordered):
        if start is None:
            start = index
        if i + 1 == len(ordered) or ordered[i + 1] != index + 1:
            parts.append(f"{start}-{index}" if index > start else f"{start}")
            start = None
    return ",".join(parts)


def array_spec(array: Array) -> str:
    """SLURM's --array value: the indices as ranges, then %parallel (e.g. 0-4,7%2)."""
    return f"{ranges(array.indices)}%{array.parallel}"


def sbatch_argv(script: Path, deps: Iterable[Dependency] = (), job_ids: Mapping[str, str] = {},
                array: str | None = None, comment: str | None = None) -> list[str]:
    """`sbatch --parsable ...`; comment tags the job (the launch's token), so a submission whose answer was lost
    can still be found (squeue_tagged_argv) and cancelled."""
    option = dependency_option(deps, job_ids)
    return ["sbatch", "--parsable", *([f"--array={array}"] if array else []), *([option] if option else []),
            *([f"--comment={comment}"] if comment else []), str(script)]


def squeue_tagged_argv() -> list[str]:
    """This user's queued jobs with their comments (job id|comment)."""
    return ["squeue", "-h", "--me", "-o", "%i|%k"]


def tagged(squeue_output: str, token: str) -> list[str]:
    """Job ids whose comment carries the launch's token (array tasks reduced to their job id)."""
    ids = [line.split("|", 1)[0].split("_")[0] for line in squeue_output.splitlines()
           if "|" in line and line.split("|", 1)[1].startswith(token)]
    return list(dict.fromkeys(ids))


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
    ("gres", "check --gpus_per_node and the profile's gpu_type and slurm.gpu_request"),
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


def slurm_message(stdout: str, stderr: str, returncode: int) -> str:
    """SLURM's complaint on one line."""
    lines = [ln.strip() for ln in (stderr or stdout).splitlines() if ln.strip()]
    return "; ".join(dict.fromkeys(ln.removeprefix("sbatch: error: ") for ln in lines)) or f"exit code {returncode}"
