"""Status of 10,000 array tasks on the local SLURM cluster (scripts/local_slurm.sh up): how many commands one
look costs and how long it takes. Submits 10 held arrays of 1,000 tasks (MaxArraySize 1001 splits them, as
datagen does), asks once per repetition, cancels them. Prints figures; asserts nothing.

    python benchmarks/bench_status.py [--tasks 10000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import hpc.backends.slurm as slurm  # noqa: E402
from hpc.manifest import JobRecord  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--tasks", type=int, default=10_000)
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    per_array = 1000
    jobs: list[JobRecord] = []
    try:
        for n in range(0, args.tasks, per_array):
            size = min(per_array, args.tasks - n)
            job_id = subprocess.run(["sbatch", "--parsable", "--hold", f"--array=0-{size - 1}", "-p", "cpu",
                                     "-A", "testacct", "-t", "1", "-J", "bench_status", "--wrap", "true"],
                                    capture_output=True, text=True, check=True).stdout.strip()
            jobs.append(JobRecord(key=f"traces_{n // per_array}", name="bench_status", job_type="traces", script="-",
                                  dependencies=[], array=f"0-{size - 1}%{size}", array_size=size, job_id=job_id))
        calls: list[list[str]] = []
        real_run = slurm.run

        def counting(argv: list[str], **kwargs):
            calls.append(argv)
            return real_run(argv, **kwargs)

        slurm.run = counting  # type: ignore[assignment]
        backend, times = slurm.Backend(), []
        for _ in range(args.repeat):
            start = time.perf_counter()
            states = backend.query(jobs)
            times.append(time.perf_counter() - start)
        slurm.run = real_run  # type: ignore[assignment]
        tasks = sum(sum(s.tasks.values()) for s in states.values())
        per_look = [c[0] for c in calls[: len(calls) // args.repeat]]
        print(f"status of {len(jobs)} arrays, {tasks} tasks: median {statistics.median(times):.3f} s, "
              f"max {max(times):.3f} s; commands per look: {', '.join(per_look)}")
    finally:
        if jobs:
            subprocess.run(["scancel", *(j.job_id or "" for j in jobs)], check=False)


if __name__ == "__main__":
    main()
