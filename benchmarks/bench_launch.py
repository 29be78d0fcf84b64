"""What a launch costs on a login node, measured side by side with its references in one run.

Every figure is a whole process, the CLI started as the `hpc-launch` console script starts it. Cases are measured in
rounds: each round runs every case once, in an order that rotates from round to round, so that all of them see the
same load. Printed are medians of wall time, CPU time (user + system, including the SLURM commands the process runs)
and peak RSS, and each ratio to its reference (wall and CPU). Targets are printed, never asserted.

    python benchmarks/bench_launch.py [--rounds 15] [--submit-rounds 5] [--no-submit]

The launcher runs with this Python: run it with the venv users launch from (/opt/hpc-launch/venv, where LLaMA-Factory
is installed, so a train launch checks its config against LLaMA-Factory's sources). submitit runs in the benchmark
venv, created on first use (or by hand) with hpc-launch (editable) and submitit:

    python -m venv /opt/hpc-launch/bench-venv && /opt/hpc-launch/bench-venv/bin/pip install submitit -e .

Child processes write bytecode to a private PYTHONPYCACHEPREFIX (an installed package has its bytecode) and use a
private hpc-launch cache (XDG_CACHE_HOME), warmed by an untimed first round; one dry run with an empty cache is shown
apart. The real submissions (the local cluster: scripts/local_slurm.sh up) depend on a held job, so nothing runs, and
are cancelled at once.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hpc import __version__  # noqa: E402

TRAIN_YAML = ROOT / "examples" / "train" / "tiny_sft.yaml"
GENERATOR = ROOT / "examples" / "datagen" / "generate.py"
#: How the `hpc-launch` console script starts the CLI (run in ROOT, so that this checkout's package is imported).
CLI = ["-c", "import sys; from hpc.launch import main; sys.exit(main())"]
SUBMITIT_MAP = """
import sys
import submitit

def task(i):
    return i

folder, n, blocker = sys.argv[1], int(sys.argv[2]), sys.argv[3]
executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
executor.update_parameters(slurm_partition="cpu", slurm_account="testacct", timeout_min=10, slurm_array_parallelism=4,
                           slurm_additional_parameters={"dependency": f"afterok:{blocker}"})
jobs = executor.map_array(task, range(n))
print(jobs[0].job_id.split("_")[0])
"""


@dataclass
class Case:
    """One command, a fresh process per run; `argv(run)` gives each run its own command line."""

    name: str
    argv: Callable[[int], list[str]]
    after: Callable[[int, str], None] = lambda run, stdout: None  # checks and cleanup, not timed
    runs: list[tuple[float, float, int]] = field(default_factory=list)  # wall s, CPU s, peak RSS KiB

    def median(self, what: int) -> float:
        return statistics.median(r[what] for r in self.runs)

    def row(self, ref: Case | None = None, target: str = "", note: str = "") -> str:
        line = f"  {self.name:<44} {self.median(0) * 1e3:8.1f} {self.median(1) * 1e3:8.1f} {self.median(2) / 1024:8.1f}"
        if ref is not None:
            line += f"   {self.median(0) / ref.median(0):5.2f}x {self.median(1) / ref.median(1):5.2f}x"
        return line + (f"  target {target}" if target else "") + (f"  {note}" if note else "")


def run_once(argv: list[str], env: dict[str, str]) -> tuple[float, float, int, str]:
    """Wall and CPU seconds and peak RSS (KiB) of one process with the commands it ran, and its stdout."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        if os.waitstatus_to_exitcode(status) != 0:
            sys.exit(f"benchmark command failed: {' '.join(argv)}\n{err.read().decode()[-3000:]}")
        return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss, out.read().decode()


def measure(cases: list[Case], rounds: int, env: dict[str, str]) -> None:
    for case in cases:  # untimed: bytecode and hpc-launch's cache get written
        case.after(-1, run_once(case.argv(-1), env)[3])
    for n in range(rounds):
        shift = n % len(cases)
        for case in cases[shift:] + cases[:shift]:
            wall, cpu, rss, stdout = run_once(case.argv(n), env)
            case.runs.append((wall, cpu, rss))
            case.after(n, stdout)


def tree_bytes(path: Path) -> int:
    """Bytes of the files and symlinks under `path`."""
    return sum(os.lstat(Path(d) / name).st_size for d, _, names in os.walk(path) for name in names)


def task_dirs(where: Path, n: int) -> Path:
    for i in range(n):
        (where / f"task_{i:05d}").mkdir(parents=True)
    return where


def bench_python(venv: Path) -> str:
    python = venv / "bin" / "python"
    if not python.exists():
        print(f"creating the benchmark venv {venv} (hpc-launch editable, submitit)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "submitit", "-e", str(ROOT)], check=True)
    return str(python)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--submit-rounds", type=int, default=5)
    p.add_argument("--no-submit", action="store_true", help="skip the real submissions (no SLURM needed)")
    p.add_argument("--bench-venv", type=Path, default=Path("/opt/hpc-launch/bench-venv"))
    args = p.parse_args()
    bench = bench_python(args.bench_venv)
    py = sys.executable
    tmp = Path(tempfile.mkdtemp(prefix="hpc-bench-"))
    env = {k: v for k, v in os.environ.items()
           if k != "PYTHONDONTWRITEBYTECODE" and not k.startswith(("SLURM_", "SBATCH_"))}
    env.update(PYTHONPYCACHEPREFIX=str(tmp / "pycache"), XDG_CACHE_HOME=str(tmp / "cache"))
    exp = tmp / "experiments"
    sizes: dict[int, int] = {}
    try:
        dry_run = [py, *CLI, "--cluster", "local", "--dry_run", "--no-validate", "--experiments_dir", str(exp)]
        train = [*dry_run, "--train_config_path", str(TRAIN_YAML)]
        tasks = {n: task_dirs(tmp / f"tasks_{n}", n) for n in (10, 1_000, 10_000)}

        def datagen(n: int) -> Case:
            def argv(run: int) -> list[str]:
                return [*dry_run, "--job_type", "datagen", "--datagen_config", "tiny_local", "--trace_script",
                        str(GENERATOR), "--no-enable_task_gen", "--enable_trace_gen", "--trace_input_path",
                        str(tasks[n]), "--chunk_size", "1", "--trace_target_repo", "org/bench", "--job_name",
                        f"datagen{n}_{run}"]

            def after(run: int, stdout: str) -> None:
                sizes[n] = tree_bytes(exp / f"datagen{n}_{run}")
                shutil.rmtree(exp / f"datagen{n}_{run}")

            return Case(f"datagen dry run, {n:,} chunks", argv, after)

        base = Case("python -c 'import jinja2, yaml'", lambda run: [py, "-c", "import jinja2, yaml"])
        help_ = Case("hpc-launch --help", lambda run: [py, *CLI, "--help"])
        dry = Case("train dry run", lambda run: [*train, "--job_name", f"train_{run}"])
        login = Case("train dry run, detected and validated", lambda run: [
            py, *CLI, "--dry_run", "--experiments_dir", str(exp), "--train_config_path", str(TRAIN_YAML),
            "--job_name", f"login_{run}"])
        dg = {n: datagen(n) for n in tasks}
        submitit_import = Case("python -c 'import submitit' (bench venv)", lambda run: [bench, "-c", "import submitit"])
        cases = [base, help_, dry, login, *dg.values(), submitit_import]
        print(f"measuring {len(cases)} cases x {args.rounds} rounds ...", flush=True)
        measure(cases, args.rounds, env)
        cold = run_once([*train, "--job_name", "cold"], {**env, "XDG_CACHE_HOME": str(tmp / "cold-cache")})

        print(f"\nhpc-launch {__version__}, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, medians of "
              f"{args.rounds} rounds; ratios: wall, cpu")
        print(f"  {'':<44} {'wall ms':>8} {'cpu ms':>8} {'peak MB':>8}")
        print(base.row())
        print(help_.row(base, "<= 1.2x"))
        print(dry.row(base, "<= 1.5x", "(--cluster local --no-validate)"))
        print(f"  {'  first run, empty hpc-launch cache':<44} {cold[0] * 1e3:8.1f} {cold[1] * 1e3:8.1f} "
              f"{cold[2] / 1024:8.1f}   {cold[0] / base.median(0):5.2f}x {cold[1] / base.median(1):5.2f}x  "
              "(once per LLaMA-Factory install)")
        print(login.row(base, note="(+ scontrol once, sbatch --test-only)"))
        for n, case in dg.items():
            print(case.row(base, "<= 2x" if n == 10_000 else "", f"experiment {sizes[n] / 1024:.1f} KB"
                           + (" (target < 200 KB)" if n == 10_000 else "")))
        print(f"  {'  cost of 10,000 chunks / cost of 10':<44} {'':>26}   "
              f"{dg[10_000].median(0) / dg[10].median(0):5.2f}x {dg[10_000].median(1) / dg[10].median(1):5.2f}x  "
              "target: flat")
        print(submitit_import.row())
        print(f"  {'  peak RSS of the train dry run':<44} {'':>26}   "
              f"{dry.median(2) / submitit_import.median(2):5.2f}x  target <= 1.1x")
        if not args.no_submit:
            submit(args.submit_rounds, bench, tasks[1_000], env, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def submit(rounds: int, bench: str, tasks: Path, env: dict[str, str], tmp: Path) -> None:
    """A real 1,000-chunk datagen submission against submitit's map_array of 1,000 tasks, both behind a held job."""
    blocker = subprocess.run(["sbatch", "--parsable", "--hold", "-p", "cpu", "-A", "testacct", "-t", "1", "-J",
                              "bench_blocker", "--wrap", "true"], capture_output=True, text=True,
                             check=True).stdout.strip()
    submitted: list[str] = []
    written: dict[str, list[int]] = {"hpc": [], "submitit": []}
    exp = tmp / "submit-experiments"

    def hpc_after(run: int, stdout: str) -> None:
        ids = [job["job_id"] for job in json.loads((exp / f"submit_{run}" / "manifest.json").read_text())["jobs"]]
        submitted.extend(ids)
        subprocess.run(["scancel", *ids], check=True)
        written["hpc"].append(tree_bytes(exp / f"submit_{run}"))

    def submitit_after(run: int, stdout: str) -> None:
        submitted.append(stdout.split()[-1])
        subprocess.run(["scancel", submitted[-1]], check=True)
        written["submitit"].append(tree_bytes(tmp / f"submitit_{run}"))

    hpc = Case("hpc-launch datagen, 1,000 chunks", lambda run: [
        bench, *CLI, "--cluster", "local", "--job_type", "datagen", "--datagen_engine", "none", "--trace_script",
        str(GENERATOR), "--no-enable_task_gen", "--enable_trace_gen", "--trace_input_path", str(tasks),
        "--chunk_size", "1", "--trace_target_repo", "org/bench", "--partition", "cpu", "--no-validate",
        "--dependency", f"afterok:{blocker}", "--experiments_dir", str(exp), "--job_name", f"submit_{run}"], hpc_after)
    submitit = Case("submitit map_array, 1,000 tasks", lambda run: [
        bench, "-c", SUBMITIT_MAP, str(tmp / f"submitit_{run}"), "1000", blocker], submitit_after)
    try:
        print(f"\nreal submissions (bench venv, behind held job {blocker}, cancelled at once), medians of {rounds} "
              "rounds", flush=True)
        measure([submitit, hpc], rounds, env)
        hpc_kb, submitit_kb = (statistics.median(written[k]) / 1024 for k in ("hpc", "submitit"))
        print(submitit.row(note=f"writes {submitit_kb:.1f} KB"))
        print(hpc.row(submitit, "<= 0.75x (cpu)", f"writes {hpc_kb:.1f} KB ({hpc_kb / submitit_kb:.2f}x)"))
    finally:
        subprocess.run(["scancel", blocker, *submitted], capture_output=True)


if __name__ == "__main__":
    main()
