"""Train: LLaMA-Factory SFT from a YAML, run by torchrun on every node of the allocation."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

import yaml

from hpc import ROOT
from hpc.context import Context, LaunchOptions, resolve_context, resolve_header
from hpc.errors import LaunchError
from hpc.plan import JobSpec, LaunchPlan, parse_dependency
from hpc.render import render

#: The per-process entry torchrun runs, copied into the experiment (see the file's docstring).
ENTRY_SOURCE = ROOT / "sbatch_templates" / "lf_train.py"
ENTRY_REL = "sbatch/lf_train.py"

#: LLaMA-Factory keys that have their own CLI flag, with their types.
TRAIN_FLAGS: dict[str, type] = {
    "model_name_or_path": str,
    "dataset": str,
    "dataset_dir": str,
    "template": str,
    "finetuning_type": str,
    "output_dir": str,
    "deepspeed": str,
    "learning_rate": float,
    "num_train_epochs": float,
    "max_steps": int,
    "per_device_train_batch_size": int,
    "gradient_accumulation_steps": int,
    "cutoff_len": int,
    "save_steps": int,
    "logging_steps": int,
    "report_to": str,
    "run_name": str,
    "hub_model_id": str,
    "seed": int,
}


def load_train_yaml(path_text: str | None) -> tuple[Path, dict]:
    if not path_text:
        raise LaunchError("--job_type train needs --train_config_path PATH (a LLaMA-Factory YAML)")
    path = Path(path_text).expanduser()
    try:
        data = yaml.safe_load(path.read_text())
    except OSError:
        raise LaunchError(f"train config {path} does not exist or cannot be read; check --train_config_path") from None
    except yaml.YAMLError as exc:
        raise LaunchError(f"train config {path} is not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise LaunchError(f"train config {path} must be a YAML mapping of LLaMA-Factory keys")
    return path, data


def merge_config(yaml_config: Mapping[str, object], overrides: Mapping[str, object],
                 profile_defaults: Mapping[str, object], builtin: Mapping[str, object]) -> dict[str, object]:
    """Explicit CLI > YAML > profile > built-in defaults: a default never replaces a YAML value.

    Keys keep the YAML's order; keys the YAML lacks follow it.
    """
    merged = {**builtin, **profile_defaults, **yaml_config, **overrides}
    return {key: merged[key] for key in dict.fromkeys([*yaml_config, *merged])}


def apply_global_batch_size(config: dict[str, object], global_batch_size: int | None, world_size: int,
                            explicit_accumulation: bool) -> None:
    """Set gradient_accumulation_steps so that batch x accumulation x world size == global batch size."""
    if global_batch_size is None:
        return
    per_device = int(config.get("per_device_train_batch_size", 1))  # type: ignore[arg-type]
    per_step = per_device * world_size
    if global_batch_size < 1 or global_batch_size % per_step:
        raise LaunchError(
            f"--global_batch_size {global_batch_size} is not a multiple of per_device_train_batch_size {per_device} "
            f"x {world_size} processes = {per_step}; pick a multiple of {per_step}"
        )
    steps = global_batch_size // per_step
    if explicit_accumulation and config.get("gradient_accumulation_steps") != steps:
        raise LaunchError(
            f"--gradient_accumulation_steps {config.get('gradient_accumulation_steps')} contradicts "
            f"--global_batch_size {global_batch_size} (which needs {steps}); give only one of them"
        )
    config["gradient_accumulation_steps"] = steps


def _default_job_name(config_path: Path) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", config_path.stem).strip("-.") or "train"
    return f"{stem[:70]}_{datetime.now():%Y%m%d-%H%M%S}"


def _check_local_files(config: Mapping[str, object], workdir: Path) -> None:
    deepspeed = config.get("deepspeed")
    if isinstance(deepspeed, str) and not (workdir / deepspeed).expanduser().is_file():
        raise LaunchError(f"deepspeed config {deepspeed!r} not found (relative paths start at {workdir})")
    for key in ("model_name_or_path", "dataset"):
        if not config.get(key):
            raise LaunchError(f"the train config has no {key!r}; add it to the YAML or pass --{key}")


def build_plan(opts: LaunchOptions, environ: Mapping[str, str] = os.environ) -> LaunchPlan:
    """The train launch as data: resolved config, rendered script, dependencies. Writes nothing."""
    config_path, yaml_config = load_train_yaml(opts.train_config_path)
    ctx: Context = resolve_context(opts, environ)
    job_name = opts.job_name or _default_job_name(config_path)
    experiment_dir = ctx.experiments_dir / job_name
    header = resolve_header(opts, ctx, job_name, experiment_dir)
    nproc = max(1, header.gpus_per_node)
    checkpoints = ctx.env.get("CHECKPOINTS_DIR")
    builtin = {
        "output_dir": str(Path(checkpoints) / job_name) if checkpoints else str(experiment_dir / "checkpoints"),
        "run_name": job_name,
    }
    config = merge_config(yaml_config, opts.train_overrides, ctx.profile.train_defaults, builtin)
    apply_global_batch_size(
        config, opts.global_batch_size, header.nodes * nproc, "gradient_accumulation_steps" in opts.train_overrides
    )
    _check_local_files(config, ctx.workdir)
    deps = tuple(parse_dependency(opts.dependency)) if opts.dependency else ()
    config_rel = "configs/train.yaml"
    env = {**ctx.env, "HPC_EXPERIMENT_DIR": str(experiment_dir)}
    script = render(
        "train.sbatch.j2",
        job_type="train",
        header=header,
        profile=ctx.profile,
        env=env,
        secrets_path=ctx.secrets_path,
        experiment_dir=experiment_dir,
        nproc_per_node=nproc,
        entrypoint=[str(experiment_dir / ENTRY_REL)],
        config_path=experiment_dir / config_rel,
        output_dir=config["output_dir"],
    )
    job = JobSpec(key="train", job_type="train", name=job_name, script=script,
                  script_path="sbatch/train.sbatch", dependencies=deps)
    files = {
        ENTRY_REL: ENTRY_SOURCE.read_text(),
        config_rel: yaml.safe_dump(config, sort_keys=False),
        "configs/launch.yaml": yaml.safe_dump(
            {
                "cluster": ctx.profile.name,
                "profile_file": str(ctx.profile.source),
                "train_config_source": str(config_path.absolute()),
                "workdir": str(ctx.workdir),
                "resources": asdict(header) | {"extra": list(header.extra), "nproc_per_node": nproc},
                "environment": env,
                "secrets_file": str(ctx.secrets_path) if ctx.secrets_path else None,
            },
            sort_keys=False,
        ),
    }
    return LaunchPlan(experiment_dir=experiment_dir, cluster=ctx.profile.name, jobs=(job,), files=files)

