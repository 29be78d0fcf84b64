"""What every job of a launch shares: options, cluster profile, environment, secrets and resources."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from hpc.envfiles import SECRETS_ENV, check_secrets_file, read_dotenv, resolve_dotenv_path
from hpc.errors import LaunchError
from hpc.plan import check_job_name
from hpc.profiles import ClusterProfile, detect_profile, get_profile
from hpc.timefmt import format_time, parse_time


@dataclass
class LaunchOptions:
    """Launcher settings from the CLI or the Python API; None means "not given"."""

    job_type: str = "train"
    cluster: str | None = None
    job_name: str | None = None
    experiments_dir: str | None = None
    dry_run: bool = False
    dependency: str | None = None
    secrets_env: str | None = None
    dotenv: str | None = None
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time_limit: str | None = None
    num_nodes: int | None = None
    gpus_per_node: int | None = None
    # train
    train_config_path: str | None = None
    global_batch_size: int | None = None
    train_overrides: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class Context:
    profile: ClusterProfile
    env: dict[str, str]  # exported by every job script (no secrets: those are sourced by path)
    secrets_path: Path | None
    experiments_dir: Path
    workdir: Path


@dataclass(frozen=True)
class SbatchHeader:
    """The #SBATCH lines of one job (rendered by sbatch_templates/base.sbatch.j2)."""

    job_name: str
    partition: str | None
    account: str | None
    qos: str | None
    nodes: int
    cpus_per_task: int
    gpus_per_node: int
    mem: str | None
    time: str
    log_pattern: str
    workdir: str
    extra: tuple[str, ...] = ()


def resolve_context(opts: LaunchOptions, environ: Mapping[str, str] = os.environ) -> Context:
    profile = get_profile(opts.cluster, environ) if opts.cluster else detect_profile(environ)
    dotenv_path = resolve_dotenv_path(opts.dotenv or profile.dotenv, profile.source)
    env = read_dotenv(dotenv_path)
    secrets = opts.secrets_env or environ.get(SECRETS_ENV) or env.get(SECRETS_ENV)
    secrets_path = check_secrets_file(secrets) if secrets else None
    if secrets_path:
        env[SECRETS_ENV] = str(secrets_path)
    experiments = opts.experiments_dir or env.get("EXPERIMENTS_DIR") or "experiments"
    return Context(
        profile=profile,
        env=env,
        secrets_path=secrets_path,
        experiments_dir=Path(experiments).expanduser().absolute(),
        workdir=Path.cwd(),
    )


def _scaled_memory(mem: str | None, share: float) -> str | None:
    """A share of the node's memory ("512G" * 0.25 -> "131072M"), for jobs using part of a node."""
    if not mem or share >= 1:
        return mem
    units = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}
    number, unit = (mem[:-1], mem[-1].upper()) if mem[-1].isalpha() else (mem, "M")
    try:
        megabytes = float(number) * units[unit]
    except (KeyError, ValueError):
        raise LaunchError(f"{mem!r} is not a memory size; write it as e.g. 512G or 8000M") from None
    return f"{max(1, int(megabytes * share))}M"


def resolve_header(opts: LaunchOptions, ctx: Context, job_name: str, experiment_dir: Path,
                   default_nodes: int = 1, gpus: bool = True) -> SbatchHeader:
    """Resources for one job: explicit option > profile > built-in default, checked against the profile."""
    p = ctx.profile
    nodes = default_nodes if opts.num_nodes is None else opts.num_nodes
    if nodes < 1:
        raise LaunchError(f"--num_nodes must be at least 1 (got {nodes})")
    if p.max_nodes is not None and nodes > p.max_nodes:
        raise LaunchError(f"--num_nodes {nodes} exceeds the {p.max_nodes} nodes a job may use on {p.name}")
    gpus_per_node = (p.gpus_per_node if opts.gpus_per_node is None else opts.gpus_per_node) if gpus else 0
    if gpus_per_node < 0 or gpus_per_node > p.gpus_per_node:
        raise LaunchError(
            f"--gpus_per_node {gpus_per_node} is not possible on {p.name}: its nodes have {p.gpus_per_node} GPUs"
        )
    partition = opts.partition or p.partition
    seconds = parse_time(opts.time_limit or p.default_time)
    if partition == p.partition and seconds > p.max_seconds:
        raise LaunchError(
            f"--time_limit {format_time(seconds)} exceeds the {p.max_time} limit of partition {partition or 'default'} on {p.name}; "
            "ask for less time (jobs can requeue and resume)"
        )
    share = gpus_per_node / p.gpus_per_node if p.gpus_per_node and gpus else 1.0
    return SbatchHeader(
        job_name=check_job_name(job_name),
        partition=partition,
        account=opts.account or p.account,
        qos=opts.qos or p.qos,
        nodes=nodes,
        cpus_per_task=max(1, int(p.cpus_per_node * share)),
        gpus_per_node=gpus_per_node if p.gpu_request != "none" else 0,
        mem=_scaled_memory(p.mem_per_node, share),
        time=format_time(seconds),
        log_pattern=str(experiment_dir / "logs" / "%x_%j.out"),
        workdir=str(ctx.workdir),
        extra=tuple(p.sbatch_extra),
    )
