"""The experiment directory: written in one step (built aside, then renamed into place)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from hpc import manifest as manifests
from hpc.backends import Materialized
from hpc.errors import LaunchError
from hpc.manifest import Manifest
from hpc.spec import Plan


def check_target(target: Path) -> None:
    """An experiment directory may replace only one left by an earlier dry run."""
    if target.exists():
        old = manifests.read(target) if (target / manifests.FILE).exists() else None
        if old is None or old.submitted:
            raise LaunchError(f"experiment directory {target} already exists; choose another --job_name")


def write_experiment(plan: Plan, materialized: Materialized, manifest: Manifest) -> None:
    """Write the plan's files, the backend's scripts, the links and the manifest.

    A directory left by an earlier dry run is replaced; one whose jobs were submitted is refused.
    """
    target = plan.experiment_dir
    check_target(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        staging.chmod(0o777 & ~umask)  # mkdtemp makes it private; the result is an ordinary directory
        for rel, text in {**plan.files, **materialized.files}.items():
            path = staging / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        for rel, link_target in plan.links.items():
            path = staging / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.symlink_to(link_target)
        (staging / "logs").mkdir()
        manifest.write(staging)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
