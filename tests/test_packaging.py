"""hpc-launch as users install it: a built wheel (not editable) in a fresh venv, used from another directory.

The wheel and its dependencies come from the wheelhouse scripts/setup.sh fills, so no index is needed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from hpc import ROOT

from helpers import TRAIN_YAML

WHEELHOUSE = Path(os.environ.get("HPC_WHEELHOUSE", Path(sys.prefix).parent / "wheelhouse"))
PROFILES = sorted(p.stem for p in (ROOT / "hpc" / "cluster_profiles").glob("*.yaml"))


def _run(argv: list, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, **kw)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv with the wheel of this checkout and its [test] extra; returns its bin directory."""
    if not (WHEELHOUSE / ".complete").exists():
        pytest.fail(f"no wheelhouse at {WHEELHOUSE}: run scripts/setup.sh")
    tmp = tmp_path_factory.mktemp("pkg")
    src = tmp / "src"
    shutil.copytree(ROOT / "hpc", src / "hpc", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    built = _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", tmp / "dist",
                  src])
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp / "dist").glob("hpc_launch-*.whl")
    venv = tmp / "venv"
    assert _run([sys.executable, "-m", "venv", venv]).returncode == 0
    pip = _run([venv / "bin" / "pip", "install", "-q", "--no-index", "--find-links", WHEELHOUSE, f"{wheel}[test]"])
    assert pip.returncode == 0, pip.stderr
    return venv / "bin"


def test_wheel_carries_profiles_templates_and_dotenv_packs(installed):
    probe = _run([installed / "python", "-c",
                  "import hpc, pathlib; p = pathlib.Path(hpc.__file__).parent; "
                  "print(len(list((p / 'cluster_profiles').glob('*.yaml'))), len(list((p / 'dotenv').glob('*.env'))), "
                  "len(list((p / 'backends/slurm/templates').glob('*.j2'))), (p / 'registry_schema.sql').is_file(), "
                  "'site-packages' in str(p))"], cwd="/")
    templates = len(list((ROOT / "hpc" / "backends" / "slurm" / "templates").glob("*.j2")))
    assert probe.stdout.split() == [str(len(PROFILES)), str(len(PROFILES)), str(templates), "True", "True"], probe


@pytest.mark.parametrize("cluster", PROFILES)
def test_dry_run_on_every_profile_from_another_directory(installed, cluster, tmp_path):
    (tmp_path / "sft.yaml").write_text(yaml.safe_dump({**TRAIN_YAML, "model_name_or_path": "/models/m"}))
    env = {"PATH": f"{installed}:/usr/bin:/bin", "HOME": str(tmp_path)}
    result = _run([installed / "hpc-launch", "--cluster", cluster, "--train_config_path", "sft.yaml", "--dry_run",
                   "--no-validate", "--experiments_dir", tmp_path / "exp", "--job_name", "pkg"],
                   cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    launch = yaml.safe_load((tmp_path / "exp" / "pkg" / "configs" / "launch.yaml").read_text())
    assert "site-packages" in launch["profile_file"]
    assert (tmp_path / "exp" / "pkg" / "sbatch" / "train.sbatch").read_text().startswith("#!/bin/bash")


def test_console_scripts_and_version(installed):
    from hpc import __version__

    assert _run([installed / "hpc-launch", "--version"]).stdout.strip() == f"hpc-launch {__version__}"
    for name in ("hpc-status", "hpc-sync", "hpc-registry"):
        assert _run([installed / name, "--help"]).returncode == 0, name


def test_the_test_extra_alone_skips_what_needs_the_registry_extra(installed, tmp_path):
    """Without supabase and wandb, the registry tests skip with the reason instead of failing."""
    tests = [ROOT / "tests" / name for name in ("test_registry_inputs.py", "test_registry_supabase.py",
                                                "test_registry_wandb.py", "test_sync.py")]
    result = _run([installed / "python", "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *tests],
                  cwd=ROOT / "tests", env={"PATH": f"{installed}:/usr/bin:/bin", "HOME": str(ROOT),
                                           "XDG_CACHE_HOME": str(tmp_path / "cache")})  # not the checkout's .cache
    assert result.returncode == 0, result.stdout[-3000:]
    assert "needs the [registry] extra" in result.stdout and " failed" not in result.stdout


@pytest.mark.slurm
def test_readme_main_command_from_the_installed_package(installed, tmp_path):
    """The README's first command, run by the installed console script (the local cluster and ML stack from
    scripts/setup.sh; the job itself runs in the ML venv named by the local dotenv)."""
    name = f"readme_{uuid.uuid4().hex[:8]}"  # its SLURM jobs are named after it: no other run's
    result = _run([installed / "hpc-launch", "--cluster", "local", "--train_config_path", "examples/train/tiny_sft.yaml",
                   "--num_nodes", "2", "--gpus_per_node", "1", "--wait", "--experiments_dir", tmp_path, "--job_name",
                   name], cwd=ROOT, env={**os.environ, "PATH": f"{installed}:{os.environ['PATH']}"}, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    launch = yaml.safe_load((tmp_path / name / "configs" / "launch.yaml").read_text())
    assert "site-packages" in launch["profile_file"] and "train: COMPLETED" in result.stdout
