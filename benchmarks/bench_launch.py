"""What a launch costs on a login node, measured side by side with references in one run.

Every figure is a whole process (the CLI started as the `hpc-launch` console script starts it), measured in rounds: each round runs
every case once, in an order that rotates from round to round, so all cases see the same load. Printed are the
medians of wall time, CPU time (user + system, including the SLURM commands a process runs) and peak RSS, and ratios
to the reference each target names. The targets are printed, never asserted: timing depends on the machine.

    python benchmarks/bench_launch.py [--rounds 15] [--submit-rounds 5] [--no-submit]

Interpreters: the launcher's cases run with this Python (the venv users launch from, with LLaMA-Factory installed, so
the train config check runs); submitit and the submission comparison run in the benchmark venv (--bench-venv), which
is created on first use and holds hpc-launch (editable) and submitit:

    python -m venv /opt/hpc-launch/bench-venv && /opt/hpc-launch/bench-venv/bin/pip install submitit -e .

Child processes write bytecode (to a private PYTHONPYCACHEPREFIX, as an installed package has it) and use a private,
warmed hpc-launch cache (XDG_CACHE_HOME); the first, cold-cache dry run is shown separately. Real submissions (needs
the local cluster, scripts/local_slurm.sh up) depend on a held job, so nothing runs; everything is cancelled.
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
#: How the `hpc-launch` console script starts the CLI (run from ROOT, so this checkout's package is the one imported).
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
    """One command, run in a fresh process each time; `argv` makes a new command line per run."""

    name: str
    argv: Callable[[int], list[str]]
    after: Callable[[int, str], None] = lambda run, stdout: None  # checks, cleanup (not timed)
    runs: list[tuple[float, float, int]] = field(default_factory=list)  # (wall s, cpu s, peak RSS KiB)

    def median(self, what: int) -> float:
        return statistics.median(r[what] for r in self.runs)


def run_once(argv: list[str], env: dict[str, str]) -> tuple[float, float, int, str]:
    """Wall and CPU seconds and peak RSS (KiB) of one process and the commands it ran; its stdout."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode()
        if proc.returncode != 0:
            sys.exit(f"benchmark command failed ({proc.returncode}): {' '.join(argv)}\n{err.read().decode()[-3000:]}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss, stdout


def measure(cases: list[Case], rounds: int, env: dict[str, str]) -> None:
    for case in cases:  # warm-up: bytecode and hpc-launch's cache are written, not timed
        case.after(-1, run_once(case.argv(-1), env)[3])
    for n in range(rounds):
        shift = n % len(cases)
        for case in cases[shift:] + cases[:shift]:
            wall, cpu, rss, stdout = run_once(case.argv(n), env)
            case.runs.append((wall, cpu, rss))
            case.after(n, stdout)


def tree_bytes(path: Path) -> int:
    """Bytes of the files (and symlinks) under `path`, as written."""
    return sum(os.lstat(Path(d) / name).st_size for d, _, names in os.walk(path) for name in names)


def task_dirs(where: Path, n: int) -> Path:
    for i in range(n):
        (where / f"task_{i:05d}").mkdir(parents=True)
    return where


def bench_env(venv: Path) -> Path:
    python = venv / "bin" / "python"
    if not python.exists():
        print(f"creating the benchmark venv {venv} (hpc-launch editable, submitit)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "submitit", "-e", str(ROOT)], check=True)
    return python


def row(case: Case, ref: Case | None = None, target: str = "", what: int = 1) -> str:
    line = (f"  {case.name:<46} {case.median(0) * 1e3:8.1f} {case.median(1) * 1e3:8.1f} "
            f"{case.median(2) / 1024:8.1f}")
    if ref is not None:
        unit = {0: "wall", 1: "cpu", 2: "peak RSS"}[what]
        ratio = case.median(what) / ref.median(what)
        line += f"   {ratio:5.2f}x {unit} of {ref.name}" + (f"  (target {target})" if target else "")
    return line


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--submit-rounds", type=int, default=5)
    p.add_argument("--no-submit", action="store_true", help="skip the real submissions (no SLURM needed)")
    p.add_argument("--bench-venv", type=Path, default=Path("/opt/hpc-launch/bench-venv"))
    args = p.parse_args()
    bench_python = str(bench_env(args.bench_venv))
    py = sys.executable
    tmp = Path(tempfile.mkdtemp(prefix="hpc-bench-"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE" and not k.startswith(("SLURM_",
                                                                                                        "SBATCH_"))}
    env.update(PYTHONPYCACHEPREFIX=str(tmp / "pycache"), XDG_CACHE_HOME=str(tmp / "cache"))
    exp = tmp / "experiments"
    sizes: dict[int, int] = {}
    try:
        launch = [py, *CLI, "--cluster", "local", "--dry_run", "--no-validate", "--experiments_dir", str(exp)]
        train = [*launch, "--train_config_path", str(TRAIN_YAML)]
        tasks = {n: task_dirs(tmp / f"tasks_{n}", n) for n in (10, 1_000, 10_000)}

        def datagen(n: int) -> Callable[[int], list[str]]:
            return lambda run: [*launch, "--job_type", "datagen", "--datagen_config", "tiny_local", "--trace_script",
                                str(GENERATOR), "--no-enable_task_gen", "--enable_trace_gen", "--trace_input_path",
                                str(tasks[n]), "--chunk_size", "1", "--trace_target_repo", "org/bench",
                                "--job_name", f"datagen{n}_{run}"]

        def record_size(n: int) -> Callable[[int, str], None]:
            def after(run: int, stdout: str) -> None:
                sizes[n] = tree_bytes(exp / f"datagen{n}_{run}")
                shutil.rmtree(exp / f"datagen{n}_{run}")
            return after

        base = Case("python -c 'import jinja2, yaml'", lambda run: [py, "-c", "import jinja2, yaml"])
        help_ = Case("hpc-launch --help", lambda run: [py, *CLI, "--help"])
        dry = Case("train dry run", lambda run: [*train, "--job_name", f"train_{run}"])
        login = Case("train dry run, cluster detected and validated", lambda run: [
            py, *CLI, "--dry_run", "--experiments_dir", str(exp), "--train_config_path", str(TRAIN_YAML),
            "--job_name", f"login_{run}"])
        dg = {n: Case(f"datagen dry run, {n:,} chunks", datagen(n), record_size(n)) for n in tasks}
        submitit_import = Case("import submitit (bench venv)", lambda run: [bench_python, "-c", "import submitit"])
        dry_bench = Case("train dry run (bench venv)", lambda run: [bench_python, *train[1:], "--job_name",
                                                                     f"bench_{run}"])
        cases = [base, help_, dry, login, *dg.values(), submitit_import, dry_bench]
        print(f"measuring {len(cases)} cases x {args.rounds} rounds ...", flush=True)
        measure(cases, args.rounds, env)

        cold_env = {**env, "XDG_CACHE_HOME": str(tmp / "cold-cache")}
        cold = run_once([*train, "--job_name", "cold"], cold_env)

        print(f"\nhpc-launch {__version__} on {os.cpu_count()} CPUs, Python {sys.version.split()[0]}; medians of "
              f"{args.rounds} rounds")
        print(f"  {'':<46} {'wall ms':>8} {'cpu ms':>8} {'peak MB':>8}")
        print(row(base))
        print(row(help_, base, "<= 1.2x", 0))
        print(row(dry, base, "<= 1.5x", 0))
        print(f"  {'  first run, empty hpc-launch cache':<46} {cold[0] * 1e3:8.1f} {cold[1] * 1e3:8.1f} "
              f"{cold[2] / 1024:8.1f}   {cold[0] / base.median(0):5.2f}x wall (once per LLaMA-Factory install)")
        print(row(login, base, "", 0) + "   (+ scontrol, sbatch --test-only)")
        for n, case in dg.items():
            print(row(case, base, "<= 2x" if n == 10_000 else "", 0) + f"   experiment {sizes[n] / 1024:.1f} KB"
                  + ("  (target < 200 KB)" if n == 10_000 else ""))
        print(f"  {'  10,000 vs 10 chunks':<46} {'':>26}   {dg[10_000].median(1) / dg[10].median(1):5.2f}x cpu "
              "(target: flat)")
        print(row(submitit_import))
        print(row(dry_bench, submitit_import, "<= 1.1x", 2))
        print(row(dry, submitit_import, "", 0))
        if not args.no_submit:
            submit(args.submit_rounds, bench_python, tasks[1_000], env, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def submit(rounds: int, bench_python: str, tasks: Path, env: dict[str, str], tmp: Path) -> None:
    """A real 1,000-chunk datagen submission against submitit's map_array of 1,000 tasks, both behind a held job."""
    sbatch = ["sbatch", "--parsable", "-p", "cpu", "-A", "testacct", "-t", "1"]
    blocker = subprocess.run([*sbatch, "--hold", "-J", "bench_blocker", "--wrap", "true"], capture_output=True,
                             text=True, check=True).stdout.strip()
    submitted: list[str] = []
    written: dict[str, list[int]] = {"hpc": [], "submitit": []}
    exp = tmp / "submit-experiments"

    def hpc_after(run: int, stdout: str) -> None:
        manifest = json.loads((exp / f"submit_{run}" / "manifest.json").read_text())
        ids = [j["job_id"] for j in manifest["jobs"]]
        submitted.extend(ids)
        subprocess.run(["scancel", *ids], check=True)
        written["hpc"].append(tree_bytes(exp / f"submit_{run}"))

    def submitit_after(run: int, stdout: str) -> None:
        job_id = stdout.split()[-1]
        submitted.append(job_id)
        subprocess.run(["scancel", job_id], check=True)
        written["submitit"].append(tree_bytes(tmp / f"submitit_{run}"))

    hpc = Case("hpc-launch datagen, 1,000 chunks (submit)", lambda run: [
        bench_python, *CLI, "--cluster", "local", "--job_type", "datagen", "--datagen_engine", "none",
        "--trace_script", str(GENERATOR), "--no-enable_task_gen", "--enable_trace_gen", "--trace_input_path",
        str(tasks), "--chunk_size", "1", "--trace_target_repo", "org/bench", "--partition", "cpu", "--no-validate",
        "--dependency", f"afterok:{blocker}", "--experiments_dir", str(exp), "--job_name", f"submit_{run}"], hpc_after)
    submitit = Case("submitit map_array, 1,000 tasks (submit)", lambda run: [
        bench_python, "-c", SUBMITIT_MAP, str(tmp / f"submitit_{run}"), "1000", blocker], submitit_after)
    try:
        print(f"\nreal submissions, {rounds} rounds (behind held job {blocker}; cancelled at once)", flush=True)
        measure([submitit, hpc], rounds, env)
        print(row(submitit))
        print(row(hpc, submitit, "<= 0.75x", 1))
        print(f"  {'  bytes written':<46} hpc-launch {statistics.median(written['hpc']) / 1024:.1f} KB, submitit "
              f"{statistics.median(written['submitit']) / 1024:.1f} KB "
              f"({statistics.median(written['hpc']) / statistics.median(written['submitit']):.2f}x)")
    finally:
        subprocess.run(["scancel", blocker, *submitted], capture_output=True)


if __name__ == "__main__":
    main()
