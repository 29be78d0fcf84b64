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
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

from hpc import ROOT, yamlio
from hpc.backends import Limits
from hpc.context import Launch, resolve_context
from hpc.datagen_config import DatagenConfig, agent_kwargs, load_config, needs_server
from hpc.errors import LaunchError
from hpc.jobside.datagen import task_names
from hpc.jobside.sync import index_ranges
from hpc.options import DatagenOptions, LaunchOptions, group_values
from hpc.pipeline import finish
from hpc.spec import (PORT, PROGRAMS, Array, Cancel, Dependency, Plan, Resources, Server, Stage, Step,
                      default_job_name)

HELPER_SOURCE = ROOT / "hpc" / "jobside" / "datagen.py"
HELPER_REL = f"{PROGRAMS}/datagen.py"
ENDPOINT_REL = "state/endpoint.json"
ENGINE_CONFIG_REL = {"tasks": "configs/datagen_config.resolved.yaml",
                     "traces": "configs/datagen_config_trace.resolved.yaml"}


def build_plan(opts: LaunchOptions, environ: Mapping[str, str] = os.environ, limits: Callable[[], Limits] = Limits) -> Plan:
    """The datagen launch as data. Writes nothing."""
    ctx = resolve_context(opts, environ)
    d = opts
    config = load_config(d, ctx, environ)
    job_name = opts.job_name or default_job_name(f"datagen_{config.engine}")
    exp = ctx.experiments_dir / job_name
    tasks_dir = Path(d.trace_input_path or d.datagen_output_dir or exp / "outputs" / "tasks").absolute()
    num_chunks = _num_chunks(d, config, tasks_dir) if d.enable_trace_gen else 0
    record = {"config": config.record(), "options": group_values(d, DatagenOptions), "tasks_dir": str(tasks_dir),
              "traces_dir": str(Path(d.trace_output_dir or exp / "outputs" / "traces").absolute()),
              "num_chunks": num_chunks}
    chunks = list(range(num_chunks))
    launch = Launch(d, ctx, job_name, limits)
    tasks_dir, traces_dir = Path(record["tasks_dir"]), Path(record["traces_dir"])
    endpoint = config.endpoint_file or str(launch.experiment_dir / ENDPOINT_REL)
    engine_files = _engine_files(launch, config, endpoint)
    stages = (("tasks", config.engine_config, d.enable_task_gen), ("traces", config.trace_engine_config, bool(chunks)))
    served = {stage: config.server is not None and on and needs_server(cfg) for stage, cfg, on in stages}
    user_deps = launch.user_dependencies()
    with_server = any(served.values())
    steps: list[Step] = [_server_step(launch, config, endpoint, user_deps)] if with_server else []
    after_server = (Dependency("after", job="server"),)
    if d.enable_task_gen:
        body = _stage_body(launch, config, "tasks", served["tasks"], endpoint, engine_files["tasks"][0], tasks_dir,
                           d.datagen_target_repo)
        steps.append(_stage_step(launch, config, "tasks", body, after_server if served["tasks"] else user_deps))
    if chunks:
        deps = after_server if served["traces"] else user_deps
        deps = (Dependency("afterok", job="tasks"), *deps) if d.enable_task_gen else deps
        body = _stage_body(launch, config, "traces", served["traces"], endpoint, engine_files["traces"][0],
                           traces_dir, d.trace_target_repo, tasks_dir=str(tasks_dir), num_chunks=record["num_chunks"],
                           jobs_dir=str(launch.experiment_dir / "trace_jobs"))
        steps += _trace_arrays(launch, config, body, deps, chunks)
    work = tuple(Dependency("afterany", job=s.job.key) for s in steps if s.job.key != "server")
    if with_server:
        steps.append(_cleanup_step(launch, work))
    if not ctx.profile.internet and (uploads := _deferred_uploads(d, tasks_dir, traces_dir, chunks)):
        steps[-1] = replace(steps[-1], deferred={"uploads": uploads})
    plan = finish(launch, steps, sync_after=work)
    files = {HELPER_REL: HELPER_SOURCE.read_text(), "configs/datagen.json": json.dumps(record, indent=2) + "\n"}
    files.update({ENGINE_CONFIG_REL[stage]: text for stage, (path, text) in engine_files.items() if text})
    return replace(plan, files={**files, **plan.files})


def _engine_files(launch: Launch, config: DatagenConfig, endpoint: str) -> dict[str, tuple[str, str]]:
    """Each stage's --engine-config (path, YAML text; the traces' text is empty when it is the tasks' file)."""
    exp = launch.experiment_dir
    tasks = yamlio.dump(config.with_endpoint(config.engine_config, endpoint))
    traces = yamlio.dump(config.with_endpoint(config.trace_engine_config, endpoint))
    paths = {stage: str(exp / rel) for stage, rel in ENGINE_CONFIG_REL.items()}
    if traces == tasks:
        return {"tasks": (paths["tasks"], tasks), "traces": (paths["tasks"], "")}
    return {"tasks": (paths["tasks"], tasks), "traces": (paths["traces"], traces)}


def _deferred_uploads(d: DatagenOptions, tasks_dir: Path, traces_dir: Path, chunks: list[int]) -> list[dict]:
    """On clusters without internet the generator gets no --target-repo; hpc.sync uploads afterwards. The chunks'
    uploads are one pattern over their indices (hpc/jobside/sync.py), the same size for 10 chunks or 10,000."""
    uploads = []
    if d.enable_task_gen and d.datagen_target_repo:
        uploads.append({"folder": str(tasks_dir), "repo": d.datagen_target_repo, "repo_type": "dataset",
                        "private": True})
    if chunks and d.trace_target_repo:
        uploads.append({"folder": f"{_literal(traces_dir)}/chunk_{{index:03d}}",
                        "repo": f"{_literal(d.trace_target_repo)}-chunk{{index:03d}}", "indices": index_ranges(chunks),
                        "repo_type": "dataset", "private": True})
    return uploads


def _literal(text: object) -> str:
    """Text as a literal part of a str.format pattern."""
    return str(text).replace("{", "{{").replace("}", "}}")


def _num_chunks(d: DatagenOptions, config: DatagenConfig, tasks_dir: Path) -> int:
    if d.num_chunks is not None:
        if d.num_chunks < 1:
            raise LaunchError(f"--num_chunks must be at least 1 (got {d.num_chunks})")
        return d.num_chunks
    if d.enable_task_gen:
        raise LaunchError("trace generation after task generation in the same launch needs --num_chunks N "
                          "(the array size; the generated tasks are split evenly inside the jobs)")
    if config.chunk_size < 1:
        raise LaunchError(f"--chunk_size must be at least 1 (got {config.chunk_size})")
    n = len(task_names(tasks_dir))
    if n == 0:
        raise LaunchError(f"--trace_input_path {tasks_dir} holds no tasks")
    return math.ceil(n / config.chunk_size)


def _resources(launch: Launch, gpus: int, cpus: int | None, time_limit: str | None = None) -> Resources:
    opts = launch.opts
    return launch.resources(partition=opts.partition, account=opts.account, qos=opts.qos,
                            time_limit=time_limit or opts.time_limit, gpus_per_node=gpus, cpus=cpus)


def _server_step(launch: Launch, config: DatagenConfig, endpoint: str, deps: tuple[Dependency, ...]) -> Step:
    server = config.server
    assert server is not None
    body = Server(command=[arg.replace("{port}", PORT) for arg in server.command], port_base=server.port,
                  health_timeout=server.health_timeout, endpoint_file=endpoint, model_name=server.model_name,
                  helper=str(launch.experiment_dir / HELPER_REL))
    try:
        resources = _resources(launch, server.gpus, None, server.time_limit)
    except LaunchError as exc:
        if not server.time_limit:
            raise
        raise LaunchError(f"the datagen config's server time_limit {server.time_limit}: {exc}") from None
    return Step(launch.job("server", body, resources, dependencies=deps, extra_env=server.env))


def _flags(pairs: tuple[tuple[str, object], ...]) -> list[str]:
    """--flag value for each value given (floats without a needless .0)."""
    argv: list[str] = []
    for flag, value in pairs:
        if value is not None:
            argv += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    return argv


def _stage_body(launch: Launch, config: DatagenConfig, stage: str, served: bool, endpoint: str,
                engine_file: str, output_dir: Path, target_repo: str | None, **chunking: object) -> Stage:
    """The generator's command line for a stage, upstream's contract (per-chunk arguments are added in the job)."""
    d, exp = launch.opts, launch.experiment_dir
    script = d.datagen_script if stage == "tasks" else (d.trace_script or d.datagen_script)
    argv = ["python", str(script), "--stage", stage, "--engine-config", engine_file]
    if stage == "tasks":
        argv += _flags((("--input-dir", d.datagen_input_dir),))
    else:
        kwargs = {**config.trace_engine_config["extra_agent_kwargs"], **agent_kwargs(d)}
        argv += _flags((("--trace-model", config.trace_model), ("--trace-agent-name", d.trace_agent_name),
                        ("--trace-agent-kwargs", json.dumps(kwargs) if kwargs else None),
                        ("--trace-n-concurrent", d.trace_n_concurrent), ("--trace-env", d.trace_env),
                        ("--trace-harbor-config", d.trace_harbor_config), ("--trace-episodes", "last"),
                        ("--trace-export-filter", "none"), ("--trace-dataset-type", "SFT"),
                        ("--trace-agent-timeout-sec", d.trace_agent_timeout_sec),
                        ("--trace-verifier-timeout-sec", d.trace_verifier_timeout_sec)))
        argv.append("--trace-export-subagents" if d.trace_export_subagents else "--trace-skip-subagents")
        argv += ["--trace-eval-only"] if d.trace_eval_only else []
    argv += _flags((("--task-type", d.task_type),)) + (["--disable-verification"] if d.disable_verification else [])
    online = launch.profile.internet
    argv += [] if online else ["--no-upload"]  # hpc.sync uploads afterwards
    return Stage(stage=stage, command=argv, extra=shlex.split(d.datagen_extra_args or "") if stage == "tasks" else [],
                 output_dir=str(output_dir), target_repo=target_repo if online else None, helper=str(exp / HELPER_REL),
                 server_name=f"{launch.job_name}_server" if served else None, endpoint_file=endpoint,
                 wait_timeout=config.wait_timeout, engine_config=engine_file, **chunking)  # type: ignore[arg-type]


def _stage_step(launch: Launch, config: DatagenConfig, key: str, body: Stage, deps: tuple[Dependency, ...],
                **job: object) -> Step:
    """A stage's job; DATAGEN_CONFIG_PATH names its engine config too, as upstream's generators expect."""
    env = {"DATAGEN_CONFIG_PATH": body.engine_config}
    return Step(launch.job(key, body, _resources(launch, 0, config.cpus_per_task), dependencies=deps, extra_env=env,
                           **job))  # type: ignore[arg-type]


def _trace_arrays(launch: Launch, config: DatagenConfig, body: Stage, deps: tuple[Dependency, ...],
                  chunks: list[int]) -> list[Step]:
    """All chunks as one array; above the backend's array size limit, several arrays, each after the one before."""
    per_array = launch.limits().max_array_size - 1  # array indices must stay below MaxArraySize
    groups: dict[int, list[int]] = {}
    for chunk in chunks:
        groups.setdefault(chunk // per_array, []).append(chunk)
    steps: list[Step] = []
    for n, (group, members) in enumerate(sorted(groups.items())):
        key = "traces" if len(groups) == 1 else f"traces_{n}"
        offset = group * per_array
        array = Array(indices=tuple(c - offset for c in members), parallel=config.chunk_parallelism, first=offset)
        job_deps = deps if not steps else (Dependency("afterany", job=steps[-1].job.key),)
        steps.append(_stage_step(launch, config, key, replace(body, chunk_offset=offset), job_deps,
                                 job_type="traces", array=array))
    return steps


def _cleanup_step(launch: Launch, deps: tuple[Dependency, ...]) -> Step:
    """Stops the inference server once the work that needs it has ended."""
    resources = _resources(launch, 0, 1, "00:10:00")
    return Step(launch.job("cleanup", Cancel(keys=["server"]), resources, dependencies=deps))
