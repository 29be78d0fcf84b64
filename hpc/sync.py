"""`python -m hpc.sync EXPERIMENT_DIR`: do the uploads an offline cluster's jobs could not (login node).

Loads the launch's secrets file (recorded in configs/launch.yaml) into this process only, so the
Hub and W&B clients find their tokens; no value is printed or written.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from dotenv import dotenv_values

from hpc import yamlio
from hpc.envfiles import check_secrets_file
from hpc.errors import LaunchError, run_reporting
from hpc.jobside.sync import run


def _load_secrets(experiment_dir: Path) -> None:
    launch = experiment_dir / "configs" / "launch.yaml"
    if not launch.is_file():
        raise LaunchError(f"{experiment_dir} has no configs/launch.yaml; is it an experiment directory?")
    recorded = yamlio.load(launch.read_text()) or {}
    env = recorded.get("environment") or {}
    for key in ("HF_ENDPOINT", "HF_HOME", "HF_HUB_CACHE", "WANDB_DIR", "WANDB_BASE_URL"):
        if key in env:
            os.environ.setdefault(key, env[key])
    if recorded.get("secrets_file"):
        path = check_secrets_file(recorded["secrets_file"])
        for key, value in dotenv_values(path).items():
            if value is not None:
                os.environ.setdefault(key, value)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hpc.sync", description=__doc__)
    p.add_argument("experiment_dir", type=Path)
    args = p.parse_args(argv)

    def action() -> int:
        _load_secrets(args.experiment_dir)
        return run(args.experiment_dir)

    return run_reporting("hpc.sync", action)


if __name__ == "__main__":
    sys.exit(main())
