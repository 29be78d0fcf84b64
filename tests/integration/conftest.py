"""Fixtures for real jobs on the local SLURM cluster (scripts/local_slurm.sh up) with the real payload."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hpc import ROOT

from helpers import run_cli


@pytest.fixture(scope="session")
def cluster() -> None:
    status = subprocess.run(["bash", str(ROOT / "scripts/local_slurm.sh"), "status"], capture_output=True, text=True)
    if status.returncode != 0:
        pytest.fail(f"the local SLURM cluster is not up; run: bash scripts/local_slurm.sh up\n{status.stdout}")


@pytest.fixture(scope="session")
def tiny_model() -> None:
    if not (ROOT / "build/tiny/model/config.json").exists():
        subprocess.run([sys.executable, "examples/make_tiny_model.py", "--out", "build/tiny"], cwd=ROOT, check=True)


class Launcher:
    """hpc-launch on the local cluster with this venv and a per-test scratch and experiments directory."""

    def __init__(self, tmp_path: Path) -> None:
        self.experiments = tmp_path / "exp"
        self.env = {"HPC_VENV": sys.prefix, "HPC_LAUNCH_SCRATCH": str(tmp_path / "scratch")}

    def __call__(self, *args: str, extra_env: dict | None = None):
        return run_cli("--cluster", "local", "--experiments_dir", str(self.experiments), *args,
                       env={**self.env, **(extra_env or {})})


@pytest.fixture
def launch(tmp_path, cluster, tiny_model) -> Launcher:
    return Launcher(tmp_path)
