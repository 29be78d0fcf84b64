"""Train: LLaMA-Factory SFT from a YAML, run by torchrun on every node of the allocation."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path

from hpc import ROOT, yamlio
from hpc.backends import Limits
from hpc.context import Launch
from hpc.errors import LaunchError
from hpc.jobs import evaluate
from hpc.lf_check import check_train_config
from hpc.lf_data import INFO_REL, parse_extra_args, resolve_datasets
from hpc.options import LaunchOptions
from hpc.pipeline import LAUNCH_REL, finish, launch_record
from hpc.prefetch import Fetcher, cache_dir, localize
from hpc.readers import read_yaml
from hpc.secret_rule import check_config
from hpc.spec import PROGRAMS, Plan, Step, Train, default_job_name
from hpc.timefmt import parse_time

#: The per-process entry torchrun runs, copied into the experiment (see the file's docstring).
ENTRY_SOURCE = ROOT / "hpc" / "jobside" / "lf_train.py"
ENTRY_REL = f"{PROGRAMS}/lf_train.py"
CONFIG_REL = "configs/train.yaml"
SUMMARY_SOURCE = ROOT / "hpc" / "jobside" / "run_summary.py"
SUMMARY_REL = f"{PROGRAMS}/run_summary.py"
#: Keys the launcher reads itself: text, or names (text, or a list of text).
_TEXT_KEYS = ("model_name_or_path", "adapter_name_or_path", "dataset_dir", "output_dir", "hub_model_id", "run_name")
_NAMES_KEYS = ("dataset", "eval_dataset", "report_to")


def load_train_yaml(path_text: str | None) -> tuple[Path, dict]:
    if not path_text:
        raise LaunchError("--job_type train needs --train_config_path PATH (a LLaMA-Factory YAML)")
    path = Path(path_text).expanduser()
    data = read_yaml(path, "train config", "check --train_config_path", shape="a YAML mapping of LLaMA-Factory keys")
    bad = next((key for key in data if not isinstance(key, str)), None)
    if bad is not None:
        raise LaunchError(f"train config {path}: key {bad!r} is not a name; LLaMA-Factory keys are names such as "
                          "learning_rate")
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
    if isinstance(global_batch_size, bool) or not isinstance(global_batch_size, int):
        raise LaunchError(f"global_batch_size must be a whole number, not {global_batch_size!r}; fix the YAML")
    raw = config.get("per_device_train_batch_size", 1)
    try:
        per_device = int(raw) if not isinstance(raw, (bool, float)) else 0  # type: ignore[arg-type]
    except (TypeError, ValueError):
        per_device = 0
    if per_device < 1:
        raise LaunchError(f"per_device_train_batch_size {raw!r} is not a whole number of at least 1; fix the YAML or "
                          "--per_device_train_batch_size")
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


def _check_launcher_keys(config: Mapping[str, object], source: Path) -> None:
    """The keys the launcher reads itself must be text (names: text or a list of text; deepspeed: a path or an
    inline mapping), without NUL characters."""
    for key in (*_TEXT_KEYS, *_NAMES_KEYS, "deepspeed"):
        value = config.get(key)
        items = value if key in _NAMES_KEYS and isinstance(value, list) else [value]
        if value is None or (key == "deepspeed" and isinstance(value, dict)) or all(
                isinstance(item, str) and "\0" not in item for item in items):
            continue
        kind = "text or a list of text" if key in _NAMES_KEYS else "text"
        raise LaunchError(f"train config {source}: {key} must be {kind}, not {repr(value)[:60]}; fix the YAML")


def _check_local_files(config: Mapping[str, object], workdir: Path) -> None:
    deepspeed = config.get("deepspeed")
    if isinstance(deepspeed, str) and not os.path.isfile((workdir / deepspeed).expanduser()):
        raise LaunchError(f"deepspeed config {deepspeed!r} not found (relative paths start at {workdir})")
    for key in ("model_name_or_path", "dataset"):
        if not config.get(key):
            raise LaunchError(f"the train config has no {key!r}; add it to the YAML or pass --{key}")


def build_plan(opts: LaunchOptions, environ: Mapping[str, str] = os.environ, limits: Callable[[], Limits] = Limits) -> Plan:
    """The train launch as data (train, then optional consolidate and eval). Writes nothing."""
    config_path, yaml_config = load_train_yaml(opts.train_config_path)
    launch = Launch.create(opts, lambda ctx: default_job_name(config_path.stem, fallback="train"), environ, limits)
    steps = [train_step(launch, config_path, yaml_config)]
    if opts.consolidate:
        from hpc.jobs import consolidate

        steps.append(consolidate.after_train(launch, steps[-1]))
    elif any([opts.consolidate_output_repo, opts.consolidate_output_dir, opts.dtype != "fp32"]):
        raise LaunchError("consolidate options were given without --consolidate; add --consolidate to chain it")
    evaluate.append_if_asked(launch, steps)
    return finish(launch, steps)


def train_step(launch: Launch, config_path: Path, yaml_config: dict) -> Step:
    opts, ctx, p = launch.opts, launch.ctx, launch.profile
    job_name, experiment_dir = launch.job_name, launch.experiment_dir
    max_restarts = opts.max_restarts
    if max_restarts < 0:
        raise LaunchError(f"--max_restarts must be 0 or more (got {max_restarts})")
    resources = launch.resources(partition=opts.partition, account=opts.account, qos=opts.qos,
                                 time_limit=opts.time_limit, nodes=1 if opts.num_nodes is None else opts.num_nodes,
                                 gpus_per_node=opts.gpus_per_node, cpus_per_node=opts.cpus_per_node)
    if parse_time(resources.time_limit) <= 2 * p.signal_seconds:
        raise LaunchError(
            f"--time_limit {resources.time_limit} leaves no time to train: {p.name} warns {p.signal_seconds} s before "
            f"the limit to checkpoint; ask for more than {2 * p.signal_seconds} s"
        )
    nproc = max(1, resources.gpus_per_node)
    checkpoints = ctx.env.get("CHECKPOINTS_DIR")
    builtin = {
        "output_dir": str(Path(checkpoints) / job_name) if checkpoints else str(experiment_dir / "checkpoints"),
        "run_name": job_name,
    }
    yaml_config = dict(yaml_config)
    yaml_batch = yaml_config.pop("global_batch_size", None)  # upstream's launcher-only key: never reaches LF
    global_batch = opts.global_batch_size if opts.global_batch_size is not None else yaml_batch
    overrides = {**opts.train_overrides, **parse_extra_args(opts.train_extra_args)}
    check_config(f"train config {config_path}", yaml_config)  # configs/train.yaml is readable by others
    check_config("train options (--train_extra_args and flags)", overrides)
    config = merge_config(yaml_config, overrides, p.train_defaults, builtin)
    _check_launcher_keys(config, config_path)
    apply_global_batch_size(config, global_batch, resources.nodes * nproc, "gradient_accumulation_steps" in overrides)
    dataset_info = resolve_datasets(config, ctx.workdir, experiment_dir)
    _check_local_files(config, ctx.workdir)
    unchecked = check_train_config(config, str(config_path))  # before any download
    run_id = re.sub(r"[^A-Za-z0-9_-]", "-", job_name)[:64]
    wandb_env = {"WANDB_RUN_ID": run_id, "WANDB_RESUME": "allow", "WANDB_NAME": job_name,
                 "WANDB_PROJECT": ctx.env.get("WANDB_PROJECT", "hpc-launch")}
    offline = not p.internet
    deferred: dict[str, list] = {}
    if offline and config.get("push_to_hub") and config.get("hub_model_id"):
        deferred["uploads"] = [{"folder": str(config["output_dir"]), "repo": str(config["hub_model_id"]),
                                "private": True, "ignore": ["checkpoint-*"]}]
    if offline and "wandb" in str(config.get("report_to", "")):
        deferred["wandb_runs"] = [{"dir": ctx.env.get("WANDB_DIR", str(ctx.workdir)), "run_id": run_id}]
    localized = None
    if offline or opts.prefetch:
        fetcher = Fetcher(cache_dir(ctx.env), dry_run=opts.dry_run, endpoint=ctx.env.get("HF_ENDPOINT"))
        localized = localize(config, ctx.workdir, experiment_dir, fetcher, offline=offline,
                             datasets=json.loads(dataset_info) if dataset_info else None)
        config = localized.config
    if opts.consolidate and not config.get("deepspeed"):
        raise LaunchError("--consolidate merges DeepSpeed ZeRO checkpoints, but the train config has no 'deepspeed' "
                          "key; train with ZeRO (e.g. --deepspeed examples/train/ds_z3.json) or drop --consolidate")
    body = Train(nproc_per_node=nproc, entrypoint=[str(experiment_dir / ENTRY_REL)],
                 config_path=experiment_dir / CONFIG_REL, output_dir=str(config["output_dir"]),
                 max_restarts=max_restarts, signal_seconds=p.signal_seconds,
                 summary_script=str(experiment_dir / SUMMARY_REL))
    job = launch.job("train", body, resources, name=job_name, dependencies=launch.user_dependencies(),
                     requeue=max_restarts > 0, extra_env=wandb_env)
    files = {
        ENTRY_REL: ENTRY_SOURCE.read_text(),
        SUMMARY_REL: SUMMARY_SOURCE.read_text(),
        CONFIG_REL: yamlio.dump(config),
        LAUNCH_REL: launch_record(launch, head={"train_config_source": str(config_path.absolute())},
                                  tail={"resources": asdict(resources) | {"nproc_per_node": nproc},
                                        "max_restarts": max_restarts}),
    }
    if dataset_info:
        files[INFO_REL] = dataset_info
    produces_model = bool(config.get("do_train", True))
    if localized:
        files.update(localized.files)
    notes = (*(localized.notes if localized else ()), *([unchecked] if unchecked else []))
    return Step(job=job, files=files, model_dir=str(config["output_dir"]) if produces_model else None,
                links=localized.links if localized else {}, notes=notes, deferred=deferred)
