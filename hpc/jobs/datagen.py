"""Datagen: task generation, then trace generation in chunks as one throttled job array, and an
optional inference server (engine vllm_local) whose endpoint the other jobs wait for.

Jobs: server (vllm_local) -> tasks (after the server started) -> traces array (afterok tasks), and a
cleanup job (afterany) that cancels the server when the work that needs it has ended.
"""

from __future__ import annotations

import json
import math
import os
import shlex
from collections.abc import Mapping
from dataclasses import asdict, replace
from datetime import datetime
from pathlib import Path

from hpc import ROOT
from hpc.context import Launch, Limits, resolve_context
from hpc.datagen_config import DatagenConfig, load_config
from hpc.errors import LaunchError
from hpc.jobside.datagen import task_list
from hpc.options import DatagenOptions, LaunchOptions, group_values
from hpc.pipeline import finish
from hpc.spec import PORT, PROGRAMS, Array, Cancel, Dependency, Plan, Resources, Server, Stage, Step

HELPER_SOURCE = ROOT / "hpc" / "jobside" / "datagen.py"
HELPER_REL = f"{PROGRAMS}/datagen.py"
ENDPOINT_REL = "state/endpoint.json"


def build_plan(opts: LaunchOptions, environ: Mapping[str, str] = os.environ, limits: Limits = Limits()) -> Plan:
    """The datagen launch as data (or, with --only_failed_chunks EXP, the unfinished chunks of EXP)."""
    ctx = resolve_context(opts, environ)
    if opts.only_failed_chunks:
        record, chunks, job_name = _retry(opts)
        d = replace(opts, **{**record["options"], "enable_task_gen": False})
        config = DatagenConfig(**record["config"])
    else:
        d = opts
        config = load_config(d, ctx.workdir, ctx.profile.inference_server_command)
        job_name = opts.job_name or f"datagen_{config.engine}_{datetime.now():%Y%m%d-%H%M%S}"
        exp = ctx.experiments_dir / job_name
        tasks_dir = Path(d.trace_input_path or d.datagen_output_dir or exp / "outputs" / "tasks").absolute()
        num_chunks = _num_chunks(d, config, tasks_dir) if d.enable_trace_gen else 0
        record = {"config": asdict(config), "options": group_values(d, DatagenOptions), "tasks_dir": str(tasks_dir),
                  "traces_dir": str(Path(d.trace_output_dir or exp / "outputs" / "traces").absolute()),
                  "num_chunks": num_chunks}
        chunks = list(range(num_chunks))
    launch = Launch(d, ctx, job_name, limits)
    tasks_dir, traces_dir = Path(record["tasks_dir"]), Path(record["traces_dir"])
    user_deps = launch.user_dependencies()
    steps: list[Step] = []
    if config.engine == "vllm_local":
        steps.append(_server_step(launch, config, user_deps))
    with_server = bool(steps)
    first_deps = (Dependency("after", job="server"),) if with_server else user_deps
    if d.enable_task_gen:
        steps.append(_tasks_step(launch, config, first_deps, with_server, tasks_dir))
    if chunks:
        deps = (Dependency("afterok", job="tasks"), *first_deps) if d.enable_task_gen else first_deps
        steps += _trace_arrays(launch, config, deps, with_server, tasks_dir, traces_dir, chunks, record["num_chunks"])
    work = tuple(Dependency("afterany", job=s.job.key) for s in steps[1 if with_server else 0:])
    if with_server:
        steps.append(_cleanup_step(launch, work))
    if not ctx.profile.internet and (uploads := _deferred_uploads(d, tasks_dir, traces_dir, chunks)):
        steps[-1] = replace(steps[-1], deferred={"uploads": uploads})
    plan = finish(launch, steps, sync_after=work)
    files = {HELPER_REL: HELPER_SOURCE.read_text(), "configs/datagen.json": json.dumps(record, indent=2) + "\n"}
    return replace(plan, files={**files, **plan.files})


def _deferred_uploads(d: DatagenOptions, tasks_dir: Path, traces_dir: Path, chunks: list[int]) -> list[dict]:
    """On clusters without internet the generator gets no --target-repo; hpc.sync uploads afterwards."""
    uploads = []
    if d.enable_task_gen and d.datagen_target_repo:
        uploads.append({"folder": str(tasks_dir), "repo": d.datagen_target_repo, "repo_type": "dataset",
                        "private": True})
    for i in chunks if d.trace_target_repo else []:
        uploads.append({"folder": str(traces_dir / f"chunk_{i:03d}"), "repo": f"{d.trace_target_repo}-chunk{i:03d}",
                        "repo_type": "dataset", "private": True})
    return uploads


def _retry(opts: LaunchOptions) -> tuple[dict, list[int], str]:
    """The record of an earlier launch and its chunks without a .done marker."""
    old = Path(opts.only_failed_chunks).expanduser().absolute()
    try:
        record = json.loads((old / "configs" / "datagen.json").read_text())
    except (OSError, ValueError):
        raise LaunchError(f"--only_failed_chunks {old}: not a datagen experiment directory (no configs/datagen.json)") from None
    missing = [i for i in range(record["num_chunks"]) if not (old / "chunks" / f"chunk_{i:03d}.done").exists()]
    if not missing:
        raise LaunchError(f"--only_failed_chunks: every chunk of {old} finished; nothing to resubmit")
    return record, missing, opts.job_name or f"{old.name}_retry_{datetime.now():%Y%m%d-%H%M%S}"


def _num_chunks(d: DatagenOptions, config: DatagenConfig, tasks_dir: Path) -> int:
    if d.num_chunks is not None:
        if d.num_chunks < 1:
            raise LaunchError(f"--num_chunks must be at least 1 (got {d.num_chunks})")
        return d.num_chunks
    if d.enable_task_gen:
        raise LaunchError("trace generation after task generation in the same launch needs --num_chunks N "
                          "(the array size; the generated tasks are split evenly inside the jobs)")
    n = len(task_list(tasks_dir))
    if n == 0:
        raise LaunchError(f"--trace_input_path {tasks_dir} holds no tasks")
    return math.ceil(n / config.chunk_size)


def _resources(launch: Launch, gpus: int, cpus: int | None, time_limit: str | None = None) -> Resources:
    opts = launch.opts
    return launch.resources(partition=opts.partition, account=opts.account, qos=opts.qos,
                            time_limit=time_limit or opts.time_limit, gpus_per_node=gpus, cpus=cpus)


def _server_step(launch: Launch, config: DatagenConfig, deps: tuple[Dependency, ...]) -> Step:
    values = {"model": config.model, "port": PORT, "gpus": str(config.server_gpus), "hpc_root": str(ROOT)}
    exp = launch.experiment_dir
    body = Server(command=[arg.format_map(values) for arg in config.server_command], port_base=config.server_port,
                  health_timeout=config.health_timeout, endpoint_file=str(exp / ENDPOINT_REL),
                  helper=str(exp / HELPER_REL))
    resources = _resources(launch, config.server_gpus, None, config.server_time_limit)
    return Step(launch.job("server", body, resources, dependencies=deps))


def _stage_body(launch: Launch, config: DatagenConfig, stage: str, with_server: bool, output_dir: Path,
                target_repo: str | None, **chunking: object) -> Stage:
    """The generator's command line for a stage (per-chunk arguments are added in the job)."""
    d, exp = launch.opts, launch.experiment_dir
    script = d.datagen_script if stage == "tasks" else (d.trace_script or d.datagen_script)
    model = (d.trace_model or config.model) if stage == "traces" else config.model
    argv = ["python", str(script), "--stage", stage, "--engine", config.engine, "--model", model]
    if stage == "traces":
        for flag, value in (("--agent-name", d.trace_agent_name), ("--agent-kwargs", d.trace_agent_kwargs),
                            ("--n-concurrent", d.trace_n_concurrent), ("--env", d.trace_env),
                            ("--harbor-config", d.trace_harbor_config)):
            if value is not None:
                argv += [flag, str(value)]
    return Stage(stage=stage, command=argv, extra=shlex.split(d.datagen_extra_args or ""), output_dir=str(output_dir),
                 target_repo=target_repo if launch.profile.internet else None, helper=str(exp / HELPER_REL),
                 server_name=f"{launch.job_name}_server" if with_server else None,
                 endpoint_file=str(exp / ENDPOINT_REL), wait_timeout=d.server_wait_timeout, **chunking)


def _tasks_step(launch: Launch, config: DatagenConfig, deps: tuple[Dependency, ...], with_server: bool,
                tasks_dir: Path) -> Step:
    body = _stage_body(launch, config, "tasks", with_server, tasks_dir, launch.opts.datagen_target_repo)
    return Step(launch.job("tasks", body, _resources(launch, 0, config.cpus_per_task), dependencies=deps))


def _trace_arrays(launch: Launch, config: DatagenConfig, deps: tuple[Dependency, ...], with_server: bool,
                  tasks_dir: Path, output_dir: Path, chunks: list[int], num_chunks: int) -> list[Step]:
    """All chunks as one array; above the backend's array size limit, several arrays, each after the one before."""
    per_array = launch.limits.max_array_size - 1  # array indices must stay below MaxArraySize
    groups: dict[int, list[int]] = {}
    for chunk in chunks:
        groups.setdefault(chunk // per_array, []).append(chunk)
    steps: list[Step] = []
    for n, (group, members) in enumerate(sorted(groups.items())):
        key = "traces" if len(groups) == 1 else f"traces_{n}"
        offset = group * per_array
        body = _stage_body(launch, config, "traces", with_server, output_dir, launch.opts.trace_target_repo,
                           tasks_dir=str(tasks_dir), num_chunks=num_chunks, chunk_offset=offset)
        array = Array(indices=tuple(c - offset for c in members), parallel=config.chunk_parallelism)
        job_deps = deps if not steps else (Dependency("afterany", job=steps[-1].job.key),)
        steps.append(Step(launch.job(key, body, _resources(launch, 0, config.cpus_per_task), job_type="traces",
                                     dependencies=job_deps, array=array)))
    return steps


def _cleanup_step(launch: Launch, deps: tuple[Dependency, ...]) -> Step:
    """Stops the inference server once the work that needs it has ended."""
    resources = _resources(launch, 0, 1, "00:10:00")
    return Step(launch.job("cleanup", Cancel(keys=["server"]), resources, dependencies=deps))
