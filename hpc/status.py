"""`python -m hpc.status EXPERIMENT_DIR [--wait]`: how the jobs of a launch are doing, in one query."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hpc.errors import LaunchError, run_reporting
from hpc.plan import MANIFEST, read_manifest, write_json
from hpc.slurm import JobState, array_size, query, wait


def _arrays(manifest: dict) -> dict[str, int]:
    """Array job id -> number of tasks, for every submitted array of the launch."""
    return {r["slurm_job_id"]: array_size(r["array"]) for r in manifest["jobs"] if r.get("array") and r.get("slurm_job_id")}


def _job_ids(manifest: dict) -> dict[str, str]:
    ids = {r["key"]: r["slurm_job_id"] for r in manifest["jobs"] if r.get("slurm_job_id")}
    if not ids:
        raise LaunchError("this experiment has no submitted jobs (was it a dry run?)")
    return ids


def _record(experiment_dir: Path, manifest: dict, states: dict[str, JobState]) -> None:
    """Store the latest SLURM states in the manifest and print one line per job."""
    by_key = {r["key"]: r for r in manifest["jobs"]}
    for record in manifest["jobs"]:
        state = states.get(record.get("slurm_job_id") or "")
        if state:
            record.update(state=state.state, exit_code=state.exit_code, elapsed=state.elapsed)
        failed = [d["job"] for d in record["dependencies"] if d.get("job") and d["kind"] == "afterok"
                  and by_key[d["job"]]["state"] not in ("COMPLETED", "PENDING", "RUNNING", "submitted")]
        if failed and record["state"] in ("CANCELLED", "PENDING"):
            record["reason"] = f"not run: {failed[0]} ended {by_key[failed[0]]['state']}"
        print(f"  {record['key']:<12} {record.get('slurm_job_id') or '-':>10}  {record['state']:<12} "
              f"{record.get('exit_code', '')} {record.get('elapsed', '')} {record.get('reason', '')}".rstrip())
    write_json(experiment_dir / MANIFEST, manifest)


def log_path(experiment_dir: Path, record: dict) -> Path:
    """Where SLURM writes a job's output (%x_%j.out; for arrays %x_%A_%a.out: the newest task's log)."""
    if record.get("array"):
        logs = sorted((experiment_dir / "logs").glob(f"{record['name']}_{record['slurm_job_id']}_*.out"),
                      key=lambda p: p.stat().st_mtime)
        return logs[-1] if logs else experiment_dir / "logs" / "missing"
    return experiment_dir / "logs" / f"{record['name']}_{record['slurm_job_id']}.out"


def ended_well(record: dict) -> bool:
    """COMPLETED, or an inference server that the launch's cleanup job cancelled when the work was done."""
    return record["state"] == "COMPLETED" or (record["job_type"] == "server" and record["state"] == "CANCELLED")


def _print_log_tails(experiment_dir: Path, manifest: dict) -> None:
    """The end of each job's log: the result on success, the reason on failure."""
    for record in manifest["jobs"]:
        path = log_path(experiment_dir, record)
        if not record.get("slurm_job_id") or not path.exists():
            continue
        lines = path.read_text(errors="replace").splitlines()[-(8 if ended_well(record) else 30):]
        print(f"--- {record['key']}: last lines of {path}")
        print("\n".join(lines))


def wait_and_report(experiment_dir: Path, first_poll: float = 2.0) -> int:
    """Wait for every job of the launch; 0 when all COMPLETED, 1 otherwise."""
    manifest = read_manifest(experiment_dir)
    ids = _job_ids(manifest)
    shown: dict[str, str] = {}

    def show_changes(states: dict[str, JobState]) -> None:
        for key, job_id in ids.items():
            state = states.get(job_id)
            if state and shown.get(key) != state.state:
                shown[key] = state.state
                print(f"  {key}: {state.state}", flush=True)

    states = wait(list(ids.values()), first_poll=first_poll, on_change=show_changes, arrays=_arrays(manifest))
    _record(experiment_dir, manifest, states)
    _print_log_tails(experiment_dir, manifest)
    return 0 if all(ended_well(r) for r in manifest["jobs"] if r.get("slurm_job_id")) else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hpc.status", description=__doc__)
    p.add_argument("experiment_dir", type=Path)
    p.add_argument("--wait", action="store_true", help="wait until every job has ended")
    args = p.parse_args(argv)
    return run_reporting("hpc.status", lambda: show(args.experiment_dir, args.wait))


def show(experiment_dir: Path, wait_for_end: bool) -> int:
    if wait_for_end:
        return wait_and_report(experiment_dir)
    manifest = read_manifest(experiment_dir)
    _record(experiment_dir, manifest, query(list(_job_ids(manifest).values()), _arrays(manifest)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
