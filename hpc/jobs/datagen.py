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
from hpc.context import Context, LaunchOptions, render_job, resolve_context, resolve_header
from hpc.datagen_config import DatagenConfig, DatagenOptions, load_config
from hpc.errors import LaunchError
from hpc.jobs.chain import deferred_files, login_sync_note
from hpc.jobside.datagen import task_list
from hpc.plan import Dependency, JobSpec, LaunchPlan, Step, parse_dependency
from hpc.slurm import DEFAULT_MAX_ARRAY_SIZE

HELPER_SOURCE = ROOT / "hpc" / "jobside" / "datagen.py"
HELPER_REL = "sbatch/datagen.py"
ENDPOINT_REL = "state/endpoint.json"
_PORT = "\0PORT\0"


def shell_words(argv: list[str]) -> str:
    """Quote argv for the script, turning the {port} placeholder into the job's own "$port"."""
    def word(arg: str) -> str:
        return '"$port"'.join(shlex.quote(part) if part else "" for part in arg.split(_PORT)) or "''"

    return " ".join(word(arg) for arg in argv)


def build_plan(opts: LaunchOptions, environ: Mapping[str, str] = os.environ,
               max_array_size: int = DEFAULT_MAX_ARRAY_SIZE) -> LaunchPlan:
    """The datagen launch as data (or, with --only_failed_chunks EXP, the unfinished chunks of EXP)."""
    ctx = resolve_context(opts, environ)
    if opts.datagen.only_failed_chunks:
        record, chunks, job_name = _retry(opts)
        d, config = DatagenOptions(**record["options"]), DatagenConfig(**record["config"])
        d.enable_task_gen = False
    else:
        d = opts.datagen
        config = load_config(d, ctx.workdir, ctx.profile.inference_server_command)
        job_name = opts.job_name or f"datagen_{config.engine}_{datetime.now():%Y%m%d-%H%M%S}"
        exp = ctx.experiments_dir / job_name
        tasks_dir = Path(d.trace_input_path or d.datagen_output_dir or exp / "outputs" / "tasks").absolute()
        num_chunks = _num_chunks(d, config, tasks_dir) if d.enable_trace_gen else 0
        record = {"config": asdict(config), "options": asdict(d), "tasks_dir": str(tasks_dir),
                  "traces_dir": str(Path(d.trace_output_dir or exp / "outputs" / "traces").absolute()),
                  "num_chunks": num_chunks}
        chunks = list(range(num_chunks))
    exp = ctx.experiments_dir / job_name
    tasks_dir, traces_dir = Path(record["tasks_dir"]), Path(record["traces_dir"])
    user_deps = tuple(parse_dependency(opts.dependency)) if opts.dependency else ()
    steps: list[Step] = []
    if config.engine == "vllm_local":
        steps.append(_server_step(opts, ctx, config, job_name, exp, user_deps))
    first_deps = (Dependency("after", job="server"),) if steps else user_deps
    with_server = bool(steps)
    if d.enable_task_gen:
        steps.append(_stage_step(opts, d, ctx, config, job_name, exp, first_deps, with_server, tasks_dir))
    if chunks:
        deps = (Dependency("afterok", job="tasks"), *first_deps) if d.enable_task_gen else first_deps
        steps += _trace_arrays(opts, d, ctx, config, job_name, exp, deps, with_server, tasks_dir, traces_dir,
                               chunks, record["num_chunks"], max_array_size)
    if with_server:
        steps.append(_cleanup_step(opts, ctx, job_name, exp, [s.job.key for s in steps[1:]]))
    plan = LaunchPlan.from_steps(exp, ctx.profile.name, steps)
    files = {HELPER_REL: HELPER_SOURCE.read_text(), "configs/datagen.json": json.dumps(record, indent=2) + "\n"}
    notes: tuple[str, ...] = ()
    if not ctx.profile.internet and (uploads := _deferred_uploads(d, tasks_dir, traces_dir, chunks)):
        files.update(deferred_files({"uploads": uploads}))
        notes = (login_sync_note(ctx, exp),)
    return replace(plan, files={**plan.files, **files}, notes=(*plan.notes, *notes))


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
    old = Path(opts.datagen.only_failed_chunks).expanduser().absolute()
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


def _header(opts: LaunchOptions, ctx: Context, name: str, exp: Path, gpus: int, cpus: int | None, array: bool,
            time_limit: str | None = None):
    header = resolve_header(ctx, name, exp, partition=opts.partition, account=opts.account, qos=opts.qos,
                            time_limit=time_limit or opts.time_limit, gpus_per_node=gpus, cpus=cpus)
    if array:
        header = replace(header, log_pattern=str(exp / "logs" / "%x_%A_%a.out"))
    return header


def _server_step(opts: LaunchOptions, ctx: Context, config: DatagenConfig, job_name: str, exp: Path,
                 deps: tuple) -> Step:
    values = {"model": config.model, "port": _PORT, "gpus": str(config.server_gpus), "hpc_root": str(ROOT)}
    command = [arg.format_map(values) for arg in config.server_command]
    header = _header(opts, ctx, f"{job_name}_server", exp, config.server_gpus, None, False, config.server_time_limit)
    script = render_job("server.sbatch.j2", ctx, header, exp, "server", command_words=shell_words(command),
                        port_base=config.server_port, health_timeout=config.health_timeout,
                        endpoint_file=str(exp / ENDPOINT_REL), helper=str(exp / HELPER_REL))
    return Step(JobSpec("server", "server", header.job_name, script, "sbatch/server.sbatch", deps))


def _stage_command(config: DatagenConfig, d: DatagenOptions, stage: str) -> tuple[list[str], list[str]]:
    """The generator's argv for a stage (before per-chunk arguments), and the extra arguments after them."""
    script = d.datagen_script if stage == "tasks" else (d.trace_script or d.datagen_script)
    model = (d.trace_model or config.model) if stage == "traces" else config.model
    argv = ["python", str(script), "--stage", stage, "--engine", config.engine, "--model", model]
    if stage == "traces":
        for flag, value in (("--agent-name", d.trace_agent_name), ("--agent-kwargs", d.trace_agent_kwargs),
                            ("--n-concurrent", d.trace_n_concurrent), ("--env", d.trace_env),
                            ("--harbor-config", d.trace_harbor_config)):
            if value is not None:
                argv += [flag, str(value)]
    return argv, shlex.split(d.datagen_extra_args or "")


def _stage_step(opts: LaunchOptions, d: DatagenOptions, ctx: Context, config: DatagenConfig, job_name: str,
                exp: Path, deps: tuple, with_server: bool, tasks_dir: Path) -> Step:
    stage = "tasks"
    command, extra = _stage_command(config, d, stage)
    header = _header(opts, ctx, f"{job_name}_{stage}", exp, 0, config.cpus_per_task, False)
    script = render_job("datagen.sbatch.j2", ctx, header, exp, stage, stage=stage, command=command, extra=extra,
                        output_dir=str(tasks_dir), target_repo=d.datagen_target_repo if ctx.profile.internet else None,
                        helper=str(exp / HELPER_REL),
                        **_server_context(job_name, exp, with_server, d.server_wait_timeout))
    return Step(JobSpec(stage, stage, header.job_name, script, f"sbatch/{stage}.sbatch", deps))


def _server_context(job_name: str, exp: Path, with_server: bool, timeout: int) -> dict[str, object]:
    return {"server_name": f"{job_name}_server" if with_server else None, "endpoint_file": str(exp / ENDPOINT_REL),
            "wait_timeout": timeout}


def _trace_arrays(opts: LaunchOptions, d: DatagenOptions, ctx: Context, config: DatagenConfig, job_name: str,
                  exp: Path, deps: tuple, with_server: bool, tasks_dir: Path, output_dir: Path, chunks: list[int],
                  num_chunks: int, max_array_size: int) -> list[Step]:
    """All chunks as one array; above MaxArraySize, several arrays, each after the one before."""
    command, extra = _stage_command(config, d, "traces")
    per_array = max_array_size - 1  # array indices must stay below MaxArraySize
    groups: dict[int, list[int]] = {}
    for chunk in chunks:
        groups.setdefault(chunk // per_array, []).append(chunk)
    steps: list[Step] = []
    for n, (group, members) in enumerate(sorted(groups.items())):
        key = "traces" if len(groups) == 1 else f"traces_{n}"
        header = _header(opts, ctx, f"{job_name}_{key}", exp, 0, config.cpus_per_task, True)
        offset = group * per_array
        script = render_job("datagen.sbatch.j2", ctx, header, exp, "traces", stage="traces", command=command,
                            extra=extra, output_dir=str(output_dir),
                            target_repo=d.trace_target_repo if ctx.profile.internet else None,
                            helper=str(exp / HELPER_REL), tasks_dir=str(tasks_dir), num_chunks=num_chunks,
                            chunk_offset=offset, **_server_context(job_name, exp, with_server, d.server_wait_timeout))
        array = f"{_ranges([c - offset for c in members])}%{config.chunk_parallelism}"
        job_deps = deps if not steps else (Dependency("afterany", job=steps[-1].job.key),)
        steps.append(Step(JobSpec(key, "traces", header.job_name, script, f"sbatch/{key}.sbatch", job_deps,
                                  array=array)))
    return steps


def _ranges(indices: list[int]) -> str:
    """SLURM array syntax for sorted indices: 0-4,7,9-11."""
    parts, start = [], None
    for i, index in enumerate(indices):
        if start is None:
            start = index
        if i + 1 == len(indices) or indices[i + 1] != index + 1:
            parts.append(f"{start}-{index}" if index > start else f"{start}")
            start = None
    return ",".join(parts)


def _cleanup_step(opts: LaunchOptions, ctx: Context, job_name: str, exp: Path, users: list[str]) -> Step:
    header = _header(opts, ctx, f"{job_name}_cleanup", exp, 0, 1, False, "00:10:00")
    command = ["scancel", "--name", f"{job_name}_server", "--me"]
    script = render_job("command.sbatch.j2", ctx, header, exp, "cleanup", command=command, make_dirs=[])
    deps = tuple(Dependency("afterany", job=key) for key in users)
    return Step(JobSpec("cleanup", "cleanup", header.job_name, script, "sbatch/cleanup.sbatch", deps))
