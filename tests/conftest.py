"""Shared fixtures: isolation from the developer's environment, a train YAML, user profile directories."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import yaml

from helpers import TRAIN_YAML, local_profile_data


def _registry_extra_installed() -> bool:
    return all(importlib.util.find_spec(name) for name in ("supabase", "wandb"))


def pytest_collection_modifyitems(config, items):
    """The fast unit layer runs first, so a broken core fails in seconds, not after the real jobs (the sort is
    stable: a module's tests stay together). Tests marked `registry` need the [registry] extra (supabase, wandb):
    without it they skip, saying so."""
    items.sort(key=lambda item: "slurm" in item.keywords or "skypilot" in item.keywords)
    if _registry_extra_installed():
        return
    skip = pytest.mark.skip(reason="needs the [registry] extra: pip install 'hpc-launch[registry]'")
    for item in items:
        if "registry" in item.keywords:
            item.add_marker(skip)


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


# --- the model registry's tests (tests/test_registry_*.py) --------------------------------------------------------

from hpc import ROOT  # noqa: E402
from postgrest_standin import CANARY_KEY, PostgresServer, PostgrestStandIn  # noqa: E402
from wandb_standin import WandbStandIn  # noqa: E402

REGISTRY_SECRET_ENV = ("SUPABASE_URL", "SUPABASE_SERVICE_ROLE_KEY", "WANDB_API_KEY", "WANDB_ENTITY", "WANDB_PROJECT",
                       "WANDB_RUN_ID", "WANDB_BASE_URL")


@pytest.fixture
def no_real_registry_services(monkeypatch, tmp_path):
    """The developer's keys never reach a test; W&B, if reached by mistake, is a dead loopback port.
    The registry test modules apply it to every test (pytestmark = pytest.mark.usefixtures(...))."""
    for key in REGISTRY_SECRET_ENV:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("WANDB_ERROR_REPORTING", "false")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))


@pytest.fixture
def postgrest():
    with PostgrestStandIn(key=CANARY_KEY) as standin:
        yield standin


@pytest.fixture
def wandb_api():
    with WandbStandIn() as standin:
        standin.add_run("my-team", "proj", "abc123", created_at="2026-11-20T10:00:00", runtime=7200,
                        config={"learning_rate": 0.001, "model_name_or_path": "Qwen/Qwen3-0.6B"})
        yield standin


@pytest.fixture(scope="session")
def pg():
    try:
        server = PostgresServer()
    except RuntimeError as exc:  # CI installs postgresql (scripts/setup.sh): missing is a failure, not a skip
        pytest.fail(f"cannot start PostgreSQL for the registry tests: {exc}")
    yield server
    server.stop()


@pytest.fixture
def registry_db(pg):
    """A fresh database with hpc/registry_schema.sql applied by psql, as the README says."""
    dsn = pg.database()
    proc = pg.psql(dsn, "-f", str(ROOT / "hpc" / "registry_schema.sql"))
    assert proc.returncode == 0, proc.stderr
    return dsn


@pytest.fixture
def recording_slurm(tmp_path, monkeypatch) -> Path:
    """SLURM's commands on PATH only record that they ran (into the returned log) and answer job id 1; the test
    runs in tmp_path."""
    bindir, calls = tmp_path / "fakebin", tmp_path / "calls.log"
    bindir.mkdir()
    for name in ("sbatch", "scontrol", "sacct", "squeue", "scancel", "srun"):
        (bindir / name).write_text(f'#!/bin/sh\necho "{name} $*" >> {calls}\necho 1\n')
        (bindir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.chdir(tmp_path)
    return calls
