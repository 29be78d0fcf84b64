"""Shared fixtures: a tiny train YAML, user profile directories, a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from hpc import ROOT

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


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch):
    """Tests never see the developer's own secrets, profiles or SLURM input variables."""
    for key in list(os.environ):
        if key in ("DC_AGENT_SECRET_ENV", "HPC_LAUNCH_PROFILES") or key.startswith(("SBATCH_", "SLURM_JOB")):
            monkeypatch.delenv(key)


@pytest.fixture
def train_yaml(tmp_path) -> Path:
    path = tmp_path / "tiny_sft.yaml"
    path.write_text(yaml.safe_dump(TRAIN_YAML))
    return path


def local_profile_data(**changes) -> dict:
    data = yaml.safe_load((ROOT / "cluster_profiles" / "local.yaml").read_text())
    data.update(changes)
    return data


@pytest.fixture
def user_profiles(tmp_path, monkeypatch):
    """Write profiles into a directory named by HPC_LAUNCH_PROFILES: user_profiles(name, **changes)."""
    directory = tmp_path / "my_profiles"
    directory.mkdir()
    monkeypatch.setenv("HPC_LAUNCH_PROFILES", str(directory))

    def write(name: str, **changes) -> Path:
        data = local_profile_data(name=name, **changes)
        path = directory / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    return write


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def run_cli(*args: str, env: dict | None = None, cwd: Path | None = None, module: str = "hpc.launch") -> Result:
    """Run the launcher as a user would: a separate process."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, env=full_env, cwd=cwd or ROOT
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)
