"""The run summary the registry reads (`--run_summary`, written by hpc/jobside/run_summary.py), checked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hpc.errors import LaunchError
from hpc.readers import read_json

SUMMARY_SCHEMA = "hpc-launch.run_summary/1"
#: The run summary's values and the types they must have (or null).
_SUMMARY_TYPES: dict[str, tuple[type, ...]] = {
    **{key: (str,) for key in ("model_name", "base_model", "training_type", "agent_name", "created_by", "cluster",
                               "weights_location", "slurm_job_id", "training_start", "training_end")},
    "datasets": (list, str), "training_parameters": (dict,), "wandb": (dict,),
}


def load_summary(path: Path) -> dict[str, Any]:
    """A run_summary.json (hpc/jobside/run_summary.py); LaunchError if unreadable, of another schema or with a
    value of the wrong type."""
    data = read_json(path, "run summary", "check --run_summary (the train job writes <experiment>/run_summary.json)")
    if data.get("schema") != SUMMARY_SCHEMA:
        raise LaunchError(f"--run_summary {path} is not a run summary ({SUMMARY_SCHEMA}, written by the train job)")
    for key, kinds in _SUMMARY_TYPES.items():
        if data.get(key) is not None and not isinstance(data[key], kinds):
            names = " or ".join(k.__name__ for k in kinds)
            raise LaunchError(f"--run_summary {path}: {key} must be {names}, not {type(data[key]).__name__}; "
                              "fix it or pass the value as a flag")
    return data
