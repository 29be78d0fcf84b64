"""Run: any command as one job (--job_type run --command "..." [--workdir DIR]), or with --backend skypilot a
ready SkyPilot task YAML (--task FILE), launched as it is."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from hpc.backends import Limits
from hpc.context import Launch, resolve_context
from hpc.errors import LaunchError
from hpc.options import LaunchOptions
from hpc.pipeline import finish
from hpc.spec import Command, Plan, Step


def build_plan(opts: LaunchOptions, environ: Mapping[str, str] = os.environ,
               limits: Callable[[], Limits] = Limits) -> Plan:
    """One job running --command with bash in --workdir (default: the current directory)."""
    if opts.task and opts.backend != "skypilot":
        raise LaunchError("--task is a SkyPilot task YAML; add --backend skypilot")
    if bool(opts.task) == bool(opts.command):
        raise LaunchError("--job_type run needs --command \"...\" (or, with --backend skypilot, --task FILE), "
                          "not both")
    if opts.task and not Path(opts.task).expanduser().is_file():
        raise LaunchError(f"--task {opts.task}: no such file; give a SkyPilot task YAML (e.g. examples/sky/cpu.yaml)")
    workdir = Path(opts.workdir or ".").expanduser().absolute()
    if not workdir.is_dir():
        raise LaunchError(f"--workdir {opts.workdir}: no such directory")
    ctx = replace(resolve_context(opts, environ), workdir=workdir)
    words = (opts.command or "").split()
    stem = Path(opts.task).stem if opts.task else Path(words[0]).name if words else "run"
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-.")[:60] or "run"
    launch = Launch(opts, ctx, opts.job_name or f"{stem}_{datetime.now():%Y%m%d-%H%M%S}", limits)
    resources = launch.resources(partition=opts.partition, account=opts.account, qos=opts.qos,
                                 time_limit=opts.time_limit, nodes=1 if opts.num_nodes is None else opts.num_nodes,
                                 gpus_per_node=opts.gpus_per_node or 0)
    body = Command(command=["bash", "-c", opts.command] if opts.command else [])
    job = launch.job("run", body, resources, name=launch.job_name, dependencies=launch.user_dependencies())
    return finish(launch, [Step(job=job)])
