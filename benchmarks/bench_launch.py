"""Launcher overhead on a login node: CLI start-up, a full train dry run, and plan rendering.

Prints figures; targets (not asserted): --help < 0.5 s, dry run < 1 s, build_plan < 20 ms.
Run: python benchmarks/bench_launch.py
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hpc.options import LaunchOptions  # noqa: E402
from hpc.jobs.train import build_plan  # noqa: E402


def timed(fn, repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def report(name: str, times: list[float]) -> None:
    print(f"{name:<34} median {statistics.median(times) * 1000:8.1f} ms   max {max(times) * 1000:8.1f} ms   n={len(times)}")


def main() -> None:
    yaml_path = str(ROOT / "examples/train/tiny_sft.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        cli = [sys.executable, "-m", "hpc.launch"]
        report("hpc-launch --help", timed(lambda: subprocess.run([*cli, "--help"], cwd=ROOT, capture_output=True), 5))
        runs = iter(range(10**6))
        dry = lambda: subprocess.run(  # noqa: E731
            [*cli, "--cluster", "local", "--train_config_path", yaml_path, "--experiments_dir", tmp,
             "--job_name", f"b{next(runs)}", "--dry_run"], cwd=ROOT, capture_output=True, check=True)
        report("hpc-launch --dry_run (train)", timed(dry, 5))
        for cluster in ("local", "jureca"):
            opts = LaunchOptions(cluster=cluster, train_config_path=yaml_path, experiments_dir=tmp, job_name="p",
                                 num_nodes=2)
            report(f"build_plan (train, {cluster})", timed(lambda: build_plan(opts), 50))


if __name__ == "__main__":
    main()
