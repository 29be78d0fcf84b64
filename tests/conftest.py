"""Shared fixtures: isolation from the developer's environment, a train YAML, user profile directories."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from helpers import TRAIN_YAML, local_profile_data


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


from fakehub import fake_hub  # noqa: F401
