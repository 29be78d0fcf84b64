"""What every job of a launch shares: options, cluster profile, environment, secrets and resources."""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from hpc.datagen_config import DatagenOptions
from hpc.envfiles import SECRETS_ENV, check_secrets_file, read_dotenv, resolve_dotenv_path
from hpc.errors import LaunchError
from hpc.plan import check_job_name
from hpc.profiles import ClusterProfile, detect_profile, get_profile
from hpc.render import render
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
    prefetch: bool = False
    tunnel: bool = False
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time_limit: str | None = None
    num_nodes: int | None = None
    gpus_per_node: int | None = None
    # train
    train_config_path: str | None = None
    global_batch_size: int | None = None
    max_restarts: int | None = None
    train_overrides: dict[str, object] = field(default_factory=dict)
    # consolidate (its own job type, or chained after train with consolidate=True)
    consolidate: bool = False
    consolidate_input: str | None = None
    consolidate_output_dir: str | None = None
    consolidate_output_repo: str | None = None
    consolidate_time_limit: str | None = None
    consolidate_partition: str | None = None
    dtype: str = "fp32"
    public: bool = False
    overwrite: bool = False
    # eval, chained after the last job that produces a model
    eval_tasks: str | None = None
    eval_time_limit: str | None = None
    eval_num_nodes: int | None = None
    # datagen
    datagen: DatagenOptions = field(default_factory=DatagenOptions)


#: Networks that never go through the tunnel (cluster-internal traffic), unless the profile says otherwise.
PRIVATE_NETWORKS = ["127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]


@dataclass(frozen=True)
class Tunnel:
    """An SSH SOCKS tunnel from the job's first node to a host with internet, used through proxychains4."""

    host: str
    direct: list[tuple[str, str]]  # (network, netmask) pairs proxychains reaches directly


@dataclass(frozen=True)
class Context:
    profile: ClusterProfile
    env: dict[str, str]  # exported by every job script (no secrets: those are sourced by path)
    secrets_path: Path | None
    experiments_dir: Path
    workdir: Path
    tunnel: Tunnel | None = None


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
    requeue: bool = False
    signal: str | None = None  # e.g. "B:USR1@300": warn the batch shell before the time limit


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
        tunnel=_tunnel(profile) if opts.tunnel else None,
    )


def _tunnel(profile: ClusterProfile) -> Tunnel:
    if not profile.tunnel_host:
        raise LaunchError(f"--tunnel: the {profile.name} profile has no tunnel_host; add the ssh destination to it")
    host = profile.tunnel_host.replace("{login}", socket.gethostname().split(".")[0])
    nets = [ipaddress.ip_network(n) for n in (PRIVATE_NETWORKS if profile.tunnel_direct is None else profile.tunnel_direct)]
    return Tunnel(host=host, direct=[(str(n.network_address), str(n.netmask)) for n in nets])


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


def resolve_header(ctx: Context, job_name: str, experiment_dir: Path, *, partition: str | None = None,
                   account: str | None = None, qos: str | None = None, time_limit: str | None = None,
                   nodes: int = 1, gpus_per_node: int | None = None, cpus: int | None = None,
                   requeue: bool = False, signal: str | None = None) -> SbatchHeader:
    """Resources for one job: a given value > the profile > built-in defaults, checked against the profile.

    gpus_per_node None means all of a node's GPUs; 0 means a CPU job that takes the whole node, or
    `cpus` CPUs of it (with the same share of its memory).
    """
    p = ctx.profile
    if nodes < 1:
        raise LaunchError(f"--num_nodes must be at least 1 (got {nodes})")
    if p.max_nodes is not None and nodes > p.max_nodes:
        raise LaunchError(f"--num_nodes {nodes} exceeds the {p.max_nodes} nodes a job may use on {p.name}")
    gpus = p.gpus_per_node if gpus_per_node is None else gpus_per_node
    if gpus < 0 or gpus > p.gpus_per_node:
        raise LaunchError(f"--gpus_per_node {gpus} is not possible on {p.name}: its nodes have {p.gpus_per_node} GPUs")
    partition = partition or p.partition
    seconds = parse_time(time_limit or p.default_time)
    if partition == p.partition and seconds > p.max_seconds:
        raise LaunchError(
            f"--time_limit {format_time(seconds)} exceeds the {p.max_time} limit of partition {partition or 'default'} "
            f"on {p.name}; ask for less time (jobs can requeue and resume)"
        )
    share = gpus / p.gpus_per_node if p.gpus_per_node and gpus else 1.0
    if not gpus and cpus is not None:
        share = min(1.0, cpus / p.cpus_per_node)
    return SbatchHeader(
        job_name=check_job_name(job_name),
        partition=partition,
        account=account or p.account,
        qos=qos or p.qos,
        nodes=nodes,
        cpus_per_task=max(1, int(p.cpus_per_node * share)),
        gpus_per_node=gpus if p.gpu_request != "none" else 0,
        mem=_scaled_memory(p.mem_per_node, share),
        time=format_time(seconds),
        log_pattern=str(experiment_dir / "logs" / "%x_%j.out"),
        workdir=str(ctx.workdir),
        extra=tuple(p.sbatch_extra),
        requeue=requeue,
        signal=signal,
    )


def render_job(template: str, ctx: Context, header: SbatchHeader, experiment_dir: Path, job_type: str,
               extra_env: Mapping[str, str] = {}, offline: bool | None = None, **extra: object) -> str:
    """Render one job's script on the shared skeleton with the launch's environment.

    offline defaults to the profile (compute nodes without internet) unless --tunnel; a job on a
    partition with internet (the sync job) passes False.
    """
    env = {**ctx.env, "HPC_EXPERIMENT_DIR": str(experiment_dir), **extra_env}
    if offline is None:
        offline = not ctx.profile.internet and ctx.tunnel is None  # a tunnel brings the internet to the job
    return render(template, job_type=job_type, header=header, profile=ctx.profile, env=env,
                  secrets_path=ctx.secrets_path, experiment_dir=experiment_dir, offline=offline,
                  tunnel=ctx.tunnel, **extra)
