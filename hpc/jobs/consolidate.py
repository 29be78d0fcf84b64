"""Consolidate: DeepSpeed ZeRO shards -> safetensors with tokenizer and config, optionally uploaded.

Its own job type (--job_type consolidate --consolidate_input ...) or chained after train
(--consolidate). The work runs in the job (hpc/jobside/consolidate.py, copied into the experiment).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

from hpc import ROOT
from hpc.backends import Limits
from hpc.context import Launch, resolve_context
from hpc.errors import LaunchError
from hpc.hub_ids import check_repo_id
from hpc.jobs import evaluate
from hpc.jobside.consolidate import find_zero_checkpoint, parse_input
from hpc.options import LaunchOptions
from hpc.pipeline import after, finish
from hpc.prefetch import Fetch, Fetcher, cache_dir
from hpc.spec import PROGRAMS, Command, Dependency, Plan, Step, default_job_name

JOBSIDE = ROOT / "hpc" / "jobside" / "consolidate.py"
SCRIPT_REL = f"{PROGRAMS}/consolidate.py"
DTYPES = ("fp32", "bf16")


def build_plan(opts: LaunchOptions, environ: Mapping[str, str] = os.environ, limits: Callable[[], Limits] = Limits) -> Plan:
    """--job_type consolidate: one consolidate job (and eval after it when asked)."""
    source = opts.consolidate_input
    if not source:
        raise LaunchError("--job_type consolidate needs --consolidate_input (a ZeRO checkpoint dir or a Hub repo id)")
    ctx = resolve_context(opts, environ)
    try:
        local, repo, revision = parse_input(source)
        if local is not None:
            find_zero_checkpoint(local)
            source = str(local.absolute())
    except ValueError as exc:
        raise LaunchError(f"--consolidate_input: {exc}") from None
    if repo is not None and (opts.prefetch or not ctx.profile.internet):
        fetcher = Fetcher(cache_dir(ctx.env), dry_run=opts.dry_run, endpoint=ctx.env.get("HF_ENDPOINT"))
        snapshot = fetcher(Fetch("model", repo, revision, "--consolidate_input"))
        if not opts.dry_run:
            try:
                find_zero_checkpoint(snapshot)
            except ValueError as exc:
                raise LaunchError(f"--consolidate_input {source}: {exc}") from None
        source = str(snapshot)
    job_name = opts.job_name or default_job_name(source.rstrip("/").split("/")[-1], "consolidate", "model")
    launch = Launch(opts, ctx, job_name, limits)
    checkpoints = ctx.env.get("CHECKPOINTS_DIR")
    output = opts.consolidate_output_dir or (
        str(Path(checkpoints) / job_name) if checkpoints else str(launch.experiment_dir / "consolidated")
    )
    steps = [_step(launch, job_name, source, output, launch.user_dependencies())]
    evaluate.append_if_asked(launch, steps)
    return finish(launch, steps)


def after_train(launch: Launch, train: Step) -> Step:
    """Consolidate the newest checkpoint of the train step's output_dir once training COMPLETED."""
    if train.model_dir is None:
        raise LaunchError("--consolidate needs a training run that saves checkpoints (do_train: true)")
    output = launch.opts.consolidate_output_dir or f"{train.model_dir.rstrip('/')}-consolidated"
    return _step(launch, f"{launch.job_name}_consolidate", train.model_dir, output, after(train))


def _step(launch: Launch, name: str, source: str, output: str, deps: tuple[Dependency, ...]) -> Step:
    opts, internet = launch.opts, launch.profile.internet
    if opts.dtype not in DTYPES:
        raise LaunchError(f"--dtype {opts.dtype!r} is not supported; use one of {', '.join(DTYPES)}")
    out = Path(output).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not opts.overwrite:
        raise LaunchError(f"consolidate output {out} is not empty; choose another --consolidate_output_dir or pass --overwrite")
    deferred: dict[str, list] = {}
    command = ["python", str(launch.experiment_dir / SCRIPT_REL), "--input", source, "--output", str(out.absolute()),
               "--dtype", opts.dtype, *(["--overwrite"] if opts.overwrite else [])]
    if opts.consolidate_output_repo:
        check_repo_id(opts.consolidate_output_repo, "--consolidate_output_repo")
        if internet:
            command += ["--output_repo", opts.consolidate_output_repo, *(["--public"] if opts.public else [])]
        else:
            deferred["uploads"] = [{"folder": str(out.absolute()), "repo": opts.consolidate_output_repo,
                                    "private": not opts.public, "ignore": [".consolidate-*"]}]
    resources = launch.resources(partition=opts.consolidate_partition or opts.partition, account=opts.account,
                                 qos=opts.qos, time_limit=opts.consolidate_time_limit, gpus_per_node=0)
    job = launch.job("consolidate", Command(command=command), resources, name=name, dependencies=deps)
    return Step(job=job, files={SCRIPT_REL: JOBSIDE.read_text()}, model_dir=str(out.absolute()), deferred=deferred)
