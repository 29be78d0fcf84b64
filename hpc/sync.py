"""`python -m hpc.sync EXPERIMENT_DIR`: do the uploads an offline cluster's jobs could not (login node).

Loads the launch's secrets file (recorded in configs/launch.yaml) into this process only, so the
Hub and W&B clients find their tokens; no value is printed or written.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from pathlib import Path

from hpc.envfiles import check_secrets_file
from hpc.errors import LaunchError, run_reporting
from hpc.jobside.sync import BadInput, check_records, run
from hpc.readers import read_json, read_text, read_yaml

_RESTORE = "it is written by hpc-launch: restore it or launch again"


def _load_secrets(experiment_dir: Path) -> None:
    from dotenv import dotenv_values

    launch = experiment_dir / "configs" / "launch.yaml"
    if not launch.exists():
        raise LaunchError(f"{experiment_dir} has no configs/launch.yaml; is it an experiment directory?")
    recorded = read_yaml(launch, "launch record", _RESTORE, empty={})
    env, secrets = recorded.get("environment") or {}, recorded.get("secrets_file")
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()) or not isinstance(
            secrets, (str, type(None))):
        raise LaunchError(f"launch record {launch}: environment must map names to text and secrets_file be a path; "
                          f"{_RESTORE}")
    for key in ("HF_ENDPOINT", "HF_HOME", "HF_HUB_CACHE", "WANDB_DIR", "WANDB_BASE_URL"):
        if key in env:
            os.environ.setdefault(key, env[key])
    if secrets:
        path = check_secrets_file(secrets)
        text = read_text(path, "secrets file", "fix it (KEY=VALUE lines, UTF-8)")
        for key, value in dotenv_values(stream=io.StringIO(text)).items():
            if value is not None:
                os.environ.setdefault(key, value)


def _records(experiment_dir: Path) -> tuple[dict | None, dict]:
    """deferred.json and state/sync.json, each read and checked (one line for anything unusable)."""
    plan_path, state_path = experiment_dir / "configs" / "deferred.json", experiment_dir / "state" / "sync.json"
    if not plan_path.exists():
        return None, {}
    plan = read_json(plan_path, "deferred-upload record", _RESTORE)
    done = read_json(state_path, "sync record", "delete it to sync everything again") if state_path.exists() else {}
    try:
        return check_records(plan, done, experiment_dir)
    except BadInput as exc:
        raise LaunchError(str(exc)) from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hpc.sync", description=__doc__)
    p.add_argument("experiment_dir", type=Path)
    args = p.parse_args(argv)

    def action() -> int:
        records = _records(args.experiment_dir)
        _load_secrets(args.experiment_dir)
        try:
            return run(args.experiment_dir, records)
        except BadInput as exc:
            raise LaunchError(str(exc)) from None

    return run_reporting("hpc.sync", action)


if __name__ == "__main__":
    sys.exit(main())
