"""Write run_summary.json when a training job ends: what the model registry reads (python -m hpc.registry).

  python run_summary.py --config RESOLVED_TRAIN_YAML --output EXPERIMENT_DIR/run_summary.json \
                        --started ISO8601 --finished ISO8601 [--job_id ID]

Runs inside the train job after training succeeded (copied into the experiment dir; stdlib + PyYAML only).
Exit 0 written, 2 bad input (one line on stderr, nothing written). The file is replaced atomically.

Schema (``"schema": "hpc-launch.run_summary/1"``); ``null`` means unknown:
  model_name           unique registry name: hub_model_id, else the name of output_dir
  hub_model_id         the config's hub_model_id
  base_model           model_name_or_path; an HF-cache snapshot path (.../models--org--name/snapshots/sha)
                       is turned back into its Hub id
  datasets             list: the config's `dataset` comma list, each replaced by its hf_hub_url (or the
                       hub_source a prefetch recorded) when
                       dataset_dir/dataset_info.json gives one
  training_type        "SFT" (stage sft) or "RL" (stage ppo); null for other stages (pt, rm, dpo, kto):
                       the registry then asks for --training-type
  stage                the config's stage
  training_start/_end  --started/--finished, ISO 8601 with a UTC offset (a naive time is taken as local)
  weights_location     output_dir, absolute
  wandb                null unless report_to names wandb (or "all"); else {entity, project, run_id, run_path,
                       url, mode} from WANDB_ENTITY, WANDB_PROJECT (default "huggingface", as transformers),
                       WANDB_RUN_ID, WANDB_MODE. run_path "entity/project/run_id" and
                       url https://wandb.ai/<entity>/<project>/runs/<run_id> only when all three are known
                       (url also only for the wandb.ai cloud: WANDB_BASE_URL unset or api.wandb.ai)
  slurm_job_id         --job_id, else SLURM_JOB_ID
  cluster              SLURM_CLUSTER_NAME
  created_by           HPC_JOB_CREATOR (--job_creator), else USER
  training_parameters_path  the config file, absolute
  training_parameters  a copy of the config (a mapping)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from datetime import datetime
from pathlib import Path

import yaml

SCHEMA = "hpc-launch.run_summary/1"
TRAINING_TYPES = {"sft": "SFT", "ppo": "RL"}
_SNAPSHOT = re.compile(r"(?:^|/)models--([^/]+?)--([^/]+)/snapshots/[^/]+/?$")


class BadInput(ValueError):
    """Reported in one line, exit 2."""


def _names(value: object) -> list[str]:
    items = value if isinstance(value, list) else str(value or "").split(",")
    return [str(v).strip() for v in items if str(v).strip()]


def iso(value: str, what: str) -> str:
    """`value` as ISO 8601 with an offset; BadInput if it is not a date-time."""
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise BadInput(f"{what} {value!r} is not an ISO 8601 date-time (e.g. $(date -Is))") from None
    return (moment if moment.tzinfo else moment.astimezone()).isoformat()


def hub_id(path: str) -> str:
    """The Hub id of an HF-cache snapshot path; anything else unchanged."""
    match = _SNAPSHOT.search(path)
    return f"{match[1]}/{match[2]}" if match else path


def dataset_ids(config: dict) -> list[str]:
    """Dataset names, each replaced by its Hub id when dataset_info.json gives one."""
    names = _names(config.get("dataset"))
    info_path = Path(str(config.get("dataset_dir") or "data")) / "dataset_info.json"
    try:
        info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    except (OSError, ValueError, RecursionError):
        info = {}
    entries = {name: info.get(name) if isinstance(info, dict) else None for name in names}

    def source(entry: object) -> str | None:  # hub_source: where hpc-launch's prefetch downloaded it from
        return (entry.get("hf_hub_url") or entry.get("hub_source")) if isinstance(entry, dict) else None

    return [str(source(e) or n) for n, e in entries.items()]


def wandb_info(config: dict, env: dict[str, str]) -> dict | None:
    """Where W&B has this run, from the job's environment; None when the run did not report to W&B."""
    reporters = {r.lower() for r in _names(config.get("report_to"))}
    if not reporters & {"wandb", "all"}:
        return None
    entity, run_id = env.get("WANDB_ENTITY") or None, env.get("WANDB_RUN_ID") or None
    project = env.get("WANDB_PROJECT") or "huggingface"
    path = f"{entity}/{project}/{run_id}" if entity and run_id else None
    cloud = env.get("WANDB_BASE_URL", "https://api.wandb.ai").rstrip("/") in ("https://api.wandb.ai", "")
    return {"entity": entity, "project": project, "run_id": run_id, "run_path": path,
            "url": f"https://wandb.ai/{entity}/{project}/runs/{run_id}" if path and cloud else None,
            "mode": env.get("WANDB_MODE") or None}


def build_summary(config: dict, config_path: Path, started: str, finished: str, job_id: str | None,
                  env: dict[str, str]) -> dict:
    """The run summary (schema in the module docstring) of a resolved LLaMA-Factory config."""
    if not config.get("model_name_or_path"):
        raise BadInput(f"{config_path} has no model_name_or_path")
    if not config.get("output_dir"):
        raise BadInput(f"{config_path} has no output_dir")
    weights = Path(str(config["output_dir"])).expanduser().absolute()
    hub_model = str(config["hub_model_id"]) if config.get("hub_model_id") else None
    stage = str(config["stage"]).lower() if config.get("stage") else None
    return {
        "schema": SCHEMA,
        "model_name": hub_model or weights.name,
        "hub_model_id": hub_model,
        "base_model": hub_id(str(config["model_name_or_path"])),
        "datasets": dataset_ids(config),
        "training_type": TRAINING_TYPES.get(stage or ""),
        "stage": stage,
        "training_start": iso(started, "--started"),
        "training_end": iso(finished, "--finished"),
        "weights_location": str(weights),
        "wandb": wandb_info(config, env),
        "slurm_job_id": job_id or env.get("SLURM_JOB_ID") or None,
        "cluster": env.get("SLURM_CLUSTER_NAME") or None,
        "created_by": env.get("HPC_JOB_CREATOR") or env.get("USER") or None,
        "training_parameters_path": str(config_path.absolute()),
        "training_parameters": config,
    }


def write_json(path: Path, data: dict) -> None:
    """Replace `path` atomically with `data` as indented JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=2, default=str)
        handle.write("\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="run_summary.py", description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, type=Path, help="the resolved LLaMA-Factory train YAML")
    p.add_argument("--output", required=True, type=Path, help="where to write run_summary.json")
    p.add_argument("--started", required=True, help="training start, ISO 8601")
    p.add_argument("--finished", required=True, help="training end, ISO 8601")
    p.add_argument("--job_id", "--job-id", dest="job_id", help="SLURM job id (default: $SLURM_JOB_ID)")
    args = p.parse_args(argv)
    try:
        try:
            config = yaml.safe_load(args.config.read_text())
        except (OSError, ValueError, yaml.YAMLError) as exc:  # ValueError: not UTF-8
            raise BadInput(f"cannot read {args.config}: {str(exc).splitlines()[0]}") from None
        if not isinstance(config, dict):
            raise BadInput(f"{args.config} is not a YAML mapping")
        summary = build_summary(config, args.config, args.started, args.finished, args.job_id, dict(os.environ))
    except BadInput as exc:
        print(f"run_summary.py: error: {exc}", file=sys.stderr)
        return 2
    write_json(args.output, summary)
    print(f"[run_summary] wrote {args.output}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
