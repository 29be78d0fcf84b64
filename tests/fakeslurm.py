"""A fake SLURM for unit tests: sbatch, scancel, sacct, squeue and scontrol as small programs first on PATH, which
keep a queue in a JSON file and record every call. The launcher runs in-process against them, without a cluster,
and a test sets job states, makes sbatch fail or scancel leave a job behind, and reads what was asked.

Run as a program (`python fakeslurm.py DIRECTORY COMMAND ARGS...`) it is one of those commands; it imports only
the standard library, so each call stays fast.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

COMMANDS = ("sbatch", "scancel", "sacct", "squeue", "scontrol", "srun")
#: The states in which a job is still in the queue (others are terminal).
LIVE = ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED")
EXIT_CODES = {"COMPLETED": "0:0", "FAILED": "1:0", "PENDING": "0:0", "RUNNING": "0:0"}


class FakeSlurm:
    """The queue and the call log of one test's fake SLURM (see the module docstring)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.bin = directory / "bin"
        self.state_file = directory / "state.json"
        self.calls_file = directory / "calls.jsonl"

    def install(self, monkeypatch) -> "FakeSlurm":
        """Write the commands, put them first on PATH, start an empty queue (ids from 100, MaxArraySize 1001)."""
        self.bin.mkdir(parents=True, exist_ok=True)
        for name in COMMANDS:
            path = self.bin / name
            path.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{Path(__file__).resolve()}" '
                            f'"{self.directory}" {name} "$@"\n')
            path.chmod(0o755)
        self.save({"next_id": 100, "jobs": {}, "submissions": 0, "fail_sbatch_at": None, "noid_sbatch_at": None,
                   "survive_scancel": [], "config": "ClusterName             = localslurm\n"
                                                    "MaxArraySize            = 1001\n"})
        monkeypatch.setenv("PATH", f"{self.bin}{os.pathsep}{os.environ['PATH']}")
        return self

    def load(self) -> dict:
        return json.loads(self.state_file.read_text())

    def save(self, state: dict) -> None:
        self.state_file.write_text(json.dumps(state, indent=1))

    def update(self, **changes) -> None:
        self.save({**self.load(), **changes})

    def set_states(self, **states: str) -> None:
        """set_states(**{"100": "COMPLETED", "101": "FAILED"}); an array's tasks all take the state."""
        state = self.load()
        for job_id, word in states.items():
            state["jobs"][job_id]["state"] = word
        self.save(state)

    def job(self, job_id: str) -> dict:
        return self.load()["jobs"][job_id]

    def calls(self, command: str | None = None) -> list[list[str]]:
        """Every call (argv, command first) in order; only those of `command` if given."""
        if not self.calls_file.exists():
            return []
        calls = [json.loads(line) for line in self.calls_file.read_text().splitlines()]
        return [c for c in calls if command is None or c[0] == command]

    def submissions(self) -> list[list[str]]:
        """The sbatch calls that submit (not --test-only)."""
        return [c for c in self.calls("sbatch") if "--test-only" not in c]

    def cancelled_ids(self) -> list[str]:
        return [i for c in self.calls("scancel") for i in c[1:] if not i.startswith("-")]


# --- the commands ------------------------------------------------------------------------------------------------


def _indices(spec: str) -> list[int]:
    out: list[int] = []
    for part in spec.split("%")[0].split(","):
        first, _, last = part.partition("-")
        out.extend(range(int(first), int(last or first) + 1))
    return out


def _option(argv: list[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _sbatch(state: dict, argv: list[str]) -> int:
    if "--test-only" in argv:
        print("sbatch: Job 0 to start at 2026-01-01T00:00:00 using 1 processors on nodes n1", file=sys.stderr)
        return 0
    state["submissions"] += 1
    if state["submissions"] == state.get("fail_sbatch_at"):
        print("sbatch: error: Batch job submission failed: injected failure", file=sys.stderr)
        return 1
    job_id = str(state["next_id"])
    state["next_id"] += 1
    script = Path(argv[-1])
    name = script.stem
    if script.is_file():
        for line in script.read_text(errors="replace").splitlines():
            if line.startswith("#SBATCH --job-name="):
                name = line.split("=", 1)[1].strip().strip("'\"")
    state["jobs"][job_id] = {"name": name, "state": "PENDING", "comment": _option(argv, "--comment") or "",
                             "array": _option(argv, "--array"), "dependency": _option(argv, "--dependency")}
    if state["submissions"] != state.get("noid_sbatch_at"):
        print(job_id)
    return 0


def _scancel(state: dict, argv: list[str]) -> int:
    for job_id in (a for a in argv if not a.startswith("-")):
        job = state["jobs"].get(job_id.split("_")[0])
        if job and job_id not in state["survive_scancel"] and job["state"] in LIVE:
            job["state"] = "CANCELLED"
    return 0


def _sacct(state: dict, argv: list[str]) -> int:
    for job_id in (_option(argv, "-j") or "").split(","):
        job = state["jobs"].get(job_id)
        if not job:
            continue
        word, code = job["state"], EXIT_CODES.get(job["state"], "0:15")
        if job["array"] and word == "PENDING":
            print(f"{job_id}_[{job['array']}]|{job['name']}|PENDING|0:0|00:00:00|None")
        elif job["array"]:
            for task in _indices(job["array"]):
                print(f"{job_id}_{task}|{job['name']}|{word}|{code}|00:00:01|None")
        else:
            print(f"{job_id}|{job['name']}|{word}|{code}|00:00:01|None")
    return 0


def _squeue(state: dict, argv: list[str]) -> int:
    live = {i: j for i, j in state["jobs"].items() if j["state"] in LIVE}
    if _option(argv, "-o") == "%i|%k":  # the launch's tagged jobs
        for job_id, job in live.items():
            print(f"{job_id}|{job['comment']}")
        return 0
    wanted = (_option(argv, "-j") or "").split(",")
    for job_id, job in live.items():
        if job_id in wanted:
            print(f"{job_id}|{job['name']}|{job['state']}|{'None' if job['state'] == 'RUNNING' else 'Priority'}")
    return 0


def _scontrol(state: dict, argv: list[str]) -> int:
    if argv[1:3] == ["show", "config"]:
        print(state["config"], end="")
        return 0
    print(f"scontrol: error: the fake SLURM does not know {' '.join(argv[1:])}", file=sys.stderr)
    return 1


def main(directory: str, argv: list[str]) -> int:
    fake = FakeSlurm(Path(directory))
    with open(fake.calls_file, "a") as log:
        log.write(json.dumps(argv) + "\n")
    state = fake.load()
    handler = {"sbatch": _sbatch, "scancel": _scancel, "sacct": _sacct, "squeue": _squeue, "scontrol": _scontrol}
    code = handler[argv[0]](state, argv) if argv[0] in handler else 0
    fake.save(state)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
