"""What SLURM says about submitted jobs: sacct/squeue command lines and their answers, combined per job and
per array (plain functions, testable without SLURM)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import field, replace

from hpc.backends.slurm.commands import to_state
from hpc.records import record

SACCT_FIELDS = "JobID,JobName,State,ExitCode,Elapsed,Reason"


def sacct_argv(job_ids: Iterable[str]) -> list[str]:
    return ["sacct", "-X", "-n", "-P", f"--format={SACCT_FIELDS}", "-j", ",".join(job_ids)]


def squeue_argv(job_ids: Iterable[str]) -> list[str]:
    return ["squeue", "-h", "-t", "all", "-o", "%i|%j|%T|%r", "-j", ",".join(job_ids)]


@record(eq=True)
class Row:
    """One job (or array task, or a range of never-started tasks) as sacct or squeue lists it."""

    job_id: str
    name: str
    state: str  # SLURM's word: PENDING, RUNNING, COMPLETED, FAILED, ...
    exit_code: str = ""
    elapsed: str = ""
    reason: str = ""  # why it is pending (Dependency, Resources, JobHeldUser, ...)
    tasks: dict[str, int] = field(default_factory=dict)  # arrays: SLURM state word -> number of tasks
    failed_tasks: tuple[int, ...] = ()  # arrays: task ids that did not complete

    @property
    def done(self) -> bool:
        return to_state(self.state).done


def _reason(text: str) -> str:
    return "" if text in ("None", "") else text


def parse_sacct(text: str) -> dict[str, Row]:
    rows: dict[str, Row] = {}
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) not in (5, 6):
            continue
        job_id, name, state, exit_code, elapsed, *reason = parts
        rows[job_id] = Row(job_id, name, state.split()[0] if state else "UNKNOWN", exit_code, elapsed,
                           _reason(reason[0] if reason else ""))
    return rows


def parse_squeue(text: str) -> dict[str, Row]:
    rows: dict[str, Row] = {}
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) in (3, 4):
            rows[parts[0]] = Row(parts[0], parts[1], parts[2], reason=_reason(parts[3] if len(parts) == 4 else ""))
    return rows


def to_explain(ids: Iterable[str], rows: Mapping[str, Row], arrays: Mapping[str, int]) -> list[str]:
    """The jobs to ask squeue about: those accounting has not recorded yet, pending ones (accounting keeps the reason
    a job had when it was recorded; only the controller knows the current one) and arrays (their pending tasks)."""
    return [j for j in ids if j in arrays or (row := rows.get(j)) is None or row.state == "PENDING"]


def with_live(rows: Mapping[str, Row], live: Mapping[str, Row]) -> dict[str, Row]:
    """Accounting's rows, completed by squeue's: the jobs accounting has not recorded, and the controller's reason."""
    merged = {**live, **rows}
    for key, row in live.items():
        if row.reason and merged[key].reason != row.reason:
            merged[key] = replace(merged[key], reason=row.reason)
    return merged


def array_size(spec: str) -> int:
    """Number of tasks of an --array spec such as "0-4%2" or "1,4,7-9"."""
    return len(array_indices(spec))


def array_indices(spec: str) -> list[int]:
    """The task ids of an --array spec such as "0-4%2" or "1,4,7-9"."""
    indices: list[int] = []
    for part in spec.split("%")[0].split(","):
        first, _, last = part.partition("-")
        indices.extend(range(int(first), int(last or first) + 1))
    return indices


def combine(job_id: str, rows: Mapping[str, Row], tasks: int | None = None) -> Row | None:
    """One row for a job, or for an array of `tasks` tasks (rows 123_0, 123_[2-4%2], ...), with counts by state.

    An array is done only when every one of its tasks has a terminal row: accounting can list an
    array's records one by one, so a partial list must not look finished.
    """
    if tasks is None:
        return rows.get(job_id)
    mine = [row for key, row in rows.items() if key.startswith(f"{job_id}_")]
    if not mine:
        return None
    counts: Counter[str] = Counter()
    for row in mine:
        counts[row.state] += _covers(row.job_id.removeprefix(f"{job_id}_"))
    name, reason = mine[0].name, next((r.reason for r in mine if r.reason), "")
    failed = tuple(sorted(int(i) for r in mine if r.done and r.state != "COMPLETED"
                          for i in [r.job_id.removeprefix(f"{job_id}_")] if i.isdigit()))
    finished = sum(n for word, n in counts.items() if to_state(word).done)
    if finished < tasks:
        state = "RUNNING" if counts.get("RUNNING") else "PENDING"
        return Row(job_id, name, state, reason=reason, tasks=dict(counts), failed_tasks=failed)
    bad = [r for r in mine if r.done and r.state != "COMPLETED"]
    summary = f"{counts.get('COMPLETED', 0)}/{tasks} tasks COMPLETED"
    return Row(job_id, name, bad[0].state if bad else "COMPLETED", bad[0].exit_code if bad else "0:0", summary,
               tasks=dict(counts), failed_tasks=failed)


def _covers(index: str) -> int:
    """Array tasks one accounting row stands for: "3" is one, "[0-4%2]" (never started) is five."""
    return 1 if index.isdigit() else array_size(index.strip("[]"))
