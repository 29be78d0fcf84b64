"""Eval: lm-evaluation-harness (built in) or the profile's own `eval_command`, on one model.

Chained after train or consolidate (--eval_tasks), on the model the step before leaves, or its own job type
(--job_type eval --eval_model DIR|org/name[@rev]). Without an eval_command the job runs `lm_eval`: the vLLM
backend with tensor parallelism over the job's GPUs, or the HF backend on CPU when the job has none; its
results go to <experiment>/eval/ and the newest results file is copied to eval/results.json.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Callable, Mapping
from dataclasses import fields
from pathlib import Path

from hpc import ROOT
from hpc.backends import Limits
from hpc.context import Context, Launch, resolve_context
from hpc.errors import LaunchError
from hpc.hub_ids import hub_reference
from hpc.options import EvalOptions, LaunchOptions
from hpc.pipeline import after, finish
from hpc.placeholders import fill
from hpc.prefetch import Fetch, Fetcher, cache_dir
from hpc.spec import Command, Dependency, Plan, Resources, Step, default_job_name

RESULTS_REL = "eval/results.json"
#: Runs lm_eval with the arguments after it, then copies the newest results file it wrote to eval/results.json.
LM_EVAL_SH = ('lm_eval "$@" && newest=$(ls -t "$HPC_EXPERIMENT_DIR"/eval/*/results_*.json | head -n 1) && '
              'cp "$newest" "$HPC_EXPERIMENT_DIR/eval/results.json" && echo "eval: results.json <- $newest"')
#: Eval options that mean nothing without --eval_tasks (--eval_model has its own message).
_NEED_TASKS = tuple(f.name for f in fields(EvalOptions) if f.name not in ("eval_tasks", "eval_model"))
_BUILTIN_ONLY = ("eval_include_path", "eval_extra_args")


def build_plan(opts: LaunchOptions, environ: Mapping[str, str] = os.environ,
               limits: Callable[[], Limits] = Limits) -> Plan:
    """--job_type eval: one eval job on --eval_model (a local model directory or a Hub repo id)."""
    if not opts.eval_model:
        raise LaunchError("--job_type eval needs --eval_model (a local model directory or a Hub id org/name[@rev])")
    if not opts.eval_tasks:
        raise LaunchError("--job_type eval needs --eval_tasks (lm_eval task names, comma-separated)")
    ctx = resolve_context(opts, environ)
    stem = opts.eval_model.partition("@")[0].rstrip("/").split("/")[-1]
    launch = Launch(opts, ctx, opts.job_name or default_job_name(stem, "eval", "model"), limits)
    resources = _checked_resources(launch)  # before anything is downloaded
    model, revision = _resolve_model(opts, ctx)
    return finish(launch, [_step(launch, resources, model, launch.user_dependencies(), launch.job_name, revision)])


def _resolve_model(opts: LaunchOptions, ctx: Context) -> tuple[str, str | None]:
    """(model directory or Hub id, revision still to pass): Hub ids are prefetched when the job is offline."""
    text = str(opts.eval_model)
    hub = hub_reference(text, ctx.workdir)
    if hub is None:
        path = ctx.workdir / Path(text).expanduser()
        if not (path / "config.json").is_file():
            raise LaunchError(f"--eval_model {text}: no model directory there (no config.json); give a local "
                              "Hugging Face model directory or a Hub repo id org/name[@revision]")
        return str(path), None
    repo, revision = hub
    if opts.prefetch or not ctx.profile.internet:
        fetcher = Fetcher(cache_dir(ctx.env), dry_run=opts.dry_run, endpoint=ctx.env.get("HF_ENDPOINT"))
        return str(fetcher(Fetch("model", repo, revision, "--eval_model"))), None
    return repo, revision


def append_if_asked(launch: Launch, steps: list[Step]) -> None:
    """With --eval_tasks, an eval job after the last step, on the model it leaves."""
    opts = launch.opts
    if opts.eval_model:
        raise LaunchError("--eval_model is for --job_type eval; a chained eval evaluates the model the step before "
                          "produces, so drop --eval_model")
    if not opts.eval_tasks:
        given = [name for name in _NEED_TASKS if getattr(opts, name) is not None]
        if given:
            raise LaunchError(f"--{given[0]} was given without --eval_tasks; add --eval_tasks to chain an eval")
        return
    producer = steps[-1]
    if producer.model_dir is None:
        raise LaunchError(f"--eval_tasks needs a model to evaluate, but the {producer.job.key} job produces none")
    steps.append(_step(launch, _checked_resources(launch), producer.model_dir, after(producer)))


def _checked_resources(launch: Launch) -> Resources:
    """The eval job's resources, once the eval options are known to suit the harness that runs."""
    opts, profile = launch.opts, launch.profile
    nodes = 1 if opts.eval_num_nodes is None else opts.eval_num_nodes
    gpus = opts.gpus_per_node if opts.eval_gpus_per_node is None else opts.eval_gpus_per_node
    resources = launch.resources(partition=opts.eval_partition or opts.partition, account=opts.account, qos=opts.qos,
                                 time_limit=opts.eval_time_limit, nodes=nodes, gpus_per_node=gpus)
    if profile.eval_command:
        builtin_only = [name for name in _BUILTIN_ONLY if getattr(opts, name) is not None]
        if builtin_only:
            raise LaunchError(f"--{builtin_only[0]} is for the built-in lm_eval harness, but the {profile.name} "
                              "profile runs its own eval_command; drop it")
        return resources
    if not all(task.strip() for task in str(opts.eval_tasks).split(",")):
        raise LaunchError(f"--eval_tasks {opts.eval_tasks!r} has an empty task name; write lm_eval task names "
                          "separated by commas, e.g. hellaswag,arc_easy")
    if nodes > 1:
        raise LaunchError(f"--eval_num_nodes {nodes}: the built-in lm_eval harness runs on one node; drop "
                          f"--eval_num_nodes or give the {profile.name} profile an eval_command")
    if opts.eval_include_path and not Path(opts.eval_include_path).expanduser().is_dir():
        raise LaunchError(f"--eval_include_path {opts.eval_include_path}: no such directory; give the folder of "
                          "your lm_eval task YAMLs (e.g. examples/eval/tasks)")
    try:
        shlex.split(opts.eval_extra_args or "")
    except ValueError as exc:
        raise LaunchError(f"--eval_extra_args is not valid shell quoting ({exc}); write it as one string, e.g. "
                          "\"--limit 100 --num_fewshot 5\"") from None
    return resources


def _step(launch: Launch, resources: Resources, model: str, deps: tuple[Dependency, ...], name: str | None = None,
          revision: str | None = None) -> Step:
    """An eval job on `model` (a directory, or a Hub id at `revision`). Never requeued."""
    results = launch.experiment_dir / RESULTS_REL
    if launch.profile.eval_command:
        command = _profile_command(launch, model, revision, resources, results)
    else:
        command = ["bash", "-c", LM_EVAL_SH, "lm_eval", *_lm_eval_args(launch.opts, model, revision, resources,
                                                                       results.parent)]
    body = Command(command=command, make_dirs=[str(results.parent)])
    return Step(job=launch.job("eval", body, resources, name=name, dependencies=deps))


def _profile_command(launch: Launch, model: str, revision: str | None, resources: Resources, output: Path) -> list[str]:
    """The profile's eval_command with its placeholders filled."""
    opts, profile = launch.opts, launch.profile
    if revision:
        raise LaunchError(f"--eval_model {opts.eval_model}: the {profile.name} profile's eval_command takes a model "
                          "without a revision; add --prefetch to download that revision first")
    values = {"model": model, "tasks": opts.eval_tasks, "output": str(output), "hpc_root": str(ROOT),
              "nodes": str(resources.nodes), "gpus_per_node": str(resources.gpus_per_node)}
    return fill(profile.eval_command or [], values, f"the {profile.name} profile's eval_command")


def _lm_eval_args(opts: LaunchOptions, model: str, revision: str | None, resources: Resources, out: Path) -> list[str]:
    """lm_eval's arguments: vLLM over the job's GPUs (tensor parallel), else HF on CPU; --eval_extra_args last."""
    model_args: dict[str, object] = {"pretrained": model, **({"revision": revision} if revision else {})}
    if resources.gpus_per_node:
        model_args.update(tensor_parallel_size=resources.gpus_per_node, gpu_memory_utilization=0.9)
        backend, device = "vllm", ["--batch_size", "auto"]
    else:
        model_args.update(dtype="float32")
        backend, device = "hf", ["--device", "cpu", "--batch_size", "8"]
    tasks = ",".join(task.strip() for task in str(opts.eval_tasks).split(","))
    args = ["--model", backend, "--model_args", json.dumps(model_args, separators=(",", ":")), "--tasks", tasks,
            *device]
    if opts.eval_include_path:
        args += ["--include_path", str(Path(opts.eval_include_path).expanduser().absolute())]
    return [*args, "--output_path", str(out), *shlex.split(opts.eval_extra_args or "")]
