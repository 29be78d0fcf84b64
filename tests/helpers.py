"""Helpers for tests: a tiny train YAML, profile data, a CLI runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from hpc import ROOT

TINY_YAML = ROOT / "examples" / "train" / "tiny_sft.yaml"

TRAIN_YAML = {
    "model_name_or_path": "build/tiny/model",
    "stage": "sft",
    "do_train": True,
    "finetuning_type": "full",
    "dataset": "tiny_sft",
    "dataset_dir": "build/tiny/data",
    "template": "qwen",
    "per_device_train_batch_size": 2,
    "learning_rate": 0.001,
    "max_steps": 5,
}


def interruptible() -> None:
    """preexec_fn of a child that a test stops with SIGINT, as Ctrl-C would: a background job of a shell (`pytest &`)
    starts with SIGINT ignored, and a Python child would inherit that and never see the interrupt."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def local_profile_data(**changes) -> dict:
    data = yaml.safe_load((ROOT / "cluster_profiles" / "local.yaml").read_text())
    data.update(changes)
    return data


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def run_cli(*args: str, env: dict | None = None, cwd: Path | None = None, module: str = "hpc.launch",
            timeout: float = 1200) -> Result:
    """Run the launcher as a user would: a separate process (a hang fails the test instead of stalling the run)."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, env=full_env, cwd=cwd or ROOT,
        timeout=timeout,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def sacct_state(job_id: str) -> str:
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "State", "-j", job_id], capture_output=True, text=True)
    return out.stdout.strip()


def manifest(exp: Path) -> dict:
    return json.loads((exp / "manifest.json").read_text())


def train_output(exp: Path) -> Path:
    return Path(yaml.safe_load((exp / "configs/train.yaml").read_text())["output_dir"])


def log_text(exp: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in (exp / "logs").glob("*.out"))


NO_NETWORK_GUARD = """
import socket
def refuse(*args, **kwargs):
    raise SystemExit(f"network call during dry run: {args}")
socket.socket.connect = refuse
socket.create_connection = refuse
socket.getaddrinfo = refuse
"""


def run_python_without_network(code: str) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter (cwd: the repo root) in which every socket connect and name lookup
    exits with "network call during dry run: ..." (NO_NETWORK_GUARD runs first)."""
    return subprocess.run([sys.executable, "-c", NO_NETWORK_GUARD + code], capture_output=True, text=True, cwd=ROOT)


def materialized(plan):
    """What the SLURM backend makes of a plan (scripts, submit commands), as a dry run would."""
    from hpc.backends.slurm import Backend

    return Backend().materialize(plan)


def script(plan, key: str) -> str:
    """The rendered sbatch script of one job of a plan."""
    m = materialized(plan)
    return m.files[m.scripts[key]]


def planned_manifest(plan, dry_run: bool = True) -> dict:
    """The manifest a launch of `plan` writes first, as JSON data."""
    from hpc.manifest import Manifest

    m = materialized(plan)
    return json.loads(Manifest.for_plan(plan, "slurm", m.scripts, m.arrays, dry_run).to_json())


def wait_for(predicate, timeout: float, what: str, last=None) -> None:
    """Poll `predicate` every 0.5 s; fail the test after `timeout` seconds, showing `last()` if given."""
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}" + (f": {last()}" if last else ""))
        time.sleep(0.5)
