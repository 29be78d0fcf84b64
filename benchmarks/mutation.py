"""Mutation score of the fast unit layer: which small changes to a module do its unit tests notice?

    /opt/hpc-launch/venv/bin/python benchmarks/mutation.py                      # every module below (slow; not timed)
    /opt/hpc-launch/venv/bin/python benchmarks/mutation.py hpc/timefmt.py ...   # a subset

For each module, mutmut 3 (installed from PyPI if missing) runs in a temporary copy of the repository's tracked files,
so nothing lands in the work tree; its `mutants/` directory is deleted afterwards. mutmut mutates code inside
functions only (module-level constants such as regular expressions are not mutated), runs the selected test files
once to learn which tests reach which function, then runs only those tests against each mutant (`-x`, stop at the
first failure). Prints killed / total per module and every surviving mutant as file:line and the change.
Not part of CI: it is slow. Results go in benchmarks/README.md, "Mutation score".
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
KILLED = ("killed", "timeout", "caught by type check")  # every other status counts as surviving ("no tests" too)
FAST = ["-p", "no:cacheprovider", "-m", "not slurm and not skypilot",  # the fast unit layer (tests/README.md)
        # runs the launcher in another directory, where mutmut's test-coverage pass cannot find its setup.cfg
        "--deselect", "tests/test_security.py::test_a_fifo_never_hangs_the_launcher"]

# module -> the unit test files that exercise it (directly or through its callers)
TARGETS = {
    "hpc/secret_rule.py": ["tests/test_security.py", "tests/test_envfiles.py"],
    "hpc/readers.py": ["tests/test_readers.py", "tests/test_reader_properties.py"],
    "hpc/placeholders.py": ["tests/test_profiles.py", "tests/test_eval_plan.py", "tests/test_datagen_plan.py"],
    "hpc/backends/slurm/accounting.py": ["tests/test_slurm_commands.py"],
    "hpc/backends/slurm/commands.py": ["tests/test_slurm_commands.py", "tests/test_validate.py"],
    "hpc/backends/slurm/submit.py": ["tests/test_operations_fake_slurm.py", "tests/test_mutation_guards_slurm.py"],
    "hpc/retry.py": ["tests/test_operations_fake_slurm.py", "tests/test_mutation_guards_slurm.py"],
    "hpc/status.py": ["tests/test_operations.py", "tests/test_operations_fake_slurm.py"],
    "hpc/timefmt.py": ["tests/test_timefmt.py"],
    # test_hostile_values.py left out: its launches make each surviving mutant cost minutes; the task's own
    # in-process unit tests exercise every function
    "hpc/backends/skypilot/task.py": ["tests/skypilot/test_skypilot_task.py", "tests/test_security.py"],
}


def ensure_mutmut() -> None:
    """Install mutmut 3 into this interpreter's environment (by package name) if it is not there."""
    try:
        import mutmut  # noqa: F401
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "mutmut>=3,<4"], check=True)


def copy_tree(dest: Path) -> None:
    """The repository's tracked files, as they are in the work tree, into `dest`."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, check=True, capture_output=True).stdout
    for name in filter(None, files.decode().split("\0")):
        src = REPO / name
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():  # cluster_profiles, dotenv, sbatch_templates point into hpc/
            os.symlink(os.readlink(src), dest / name)
        elif src.is_file():
            shutil.copy2(src, dest / name)


def mutmut(work: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mutmut", *args], cwd=work, capture_output=True, text=True)


def run_module(module: str, tests: list[str]) -> tuple[int, int, list[str]]:
    """Mutate `module` against `tests`; (killed, total, survivors as 'file:line: - old / + new')."""
    with tempfile.TemporaryDirectory(prefix="hpc-mutation-") as tmp:
        copy_tree(work := Path(tmp))
        top = sorted({p.name for p in work.iterdir()} - {"hpc", "tests", "pyproject.toml"})
        lines = lambda xs: "".join(f"\n    {x}" for x in xs)  # noqa: E731  (setup.cfg lists: one per line)
        (work / "setup.cfg").write_text(
            "[mutmut]\nsource_paths = hpc\n"
            f"only_mutate = {module}\n"
            f"also_copy ={lines(top)}\n"
            f"pytest_add_cli_args ={lines(FAST)}\n"
            f"pytest_add_cli_args_test_selection ={lines(tests)}\n")
        run = mutmut(work, "run", "--max-children", "1")  # one test process at a time
        if "mutations/second" not in run.stdout + run.stderr and run.returncode:
            sys.exit(f"mutmut failed on {module}:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
        statuses = dict(re.findall(r"^\s+(\S+): (.+)$", mutmut(work, "results", "--all", "true").stdout, re.M))
        killed = sum(s in KILLED for s in statuses.values())
        survivors, source = [], (REPO / module).read_text().splitlines()
        for name, status in ((n, s) for n, s in statuses.items() if s not in KILLED):
            # mutmut names a mutant x_<function>__mutmut_<n> (xǁ<class>ǁ<method>__mutmut_<n> for a method) and
            # shows it as a diff of that function alone: its line in the file is the def's line + the diff's
            func = re.search(r"(?:x_|ǁ)([^\Wǁ]+?)__mutmut_\d+$", name).group(1)
            def_line = next(i for i, ln in enumerate(source, 1) if re.match(rf"\s*def {func}\(", ln))
            diff = mutmut(work, "show", name).stdout
            start = int(re.search(r"^@@ -(\d+)", diff, re.M).group(1))
            body = diff.split("\n@@", 1)[1].splitlines()[1:]
            offset = next(i for i, ln in enumerate(body) if ln.startswith(("-", "+")))
            old, new = (" / ".join(ln[1:].strip() for ln in body if ln[:1] == sign) for sign in "-+")
            survivors.append(f"{module}:{def_line + start - 1 + offset}: {old}  ->  {new}  [{status}]")
        return killed, len(statuses), survivors


def main(argv: list[str]) -> None:
    ensure_mutmut()
    modules = argv or list(TARGETS)
    unknown = [m for m in modules if m not in TARGETS]
    if unknown:
        sys.exit(f"no test selection for {unknown}; known: {', '.join(TARGETS)}")
    report = []
    for module in modules:
        killed, total, survivors = run_module(module, TARGETS[module])
        pct = 100 * killed / total if total else 0.0
        report.append(f"{module}: {killed} / {total} killed ({pct:.0f}%)")
        print(report[-1], flush=True)
        for s in survivors:
            print("    survived:", s, flush=True)
    print("\nMutation score\n" + "\n".join(report))


if __name__ == "__main__":
    main(sys.argv[1:])
