"""What every job of a launch shares: options, cluster profile, environment, secrets and resources.

A Launch bundles them with the job name and experiment directory; job builders take one Launch.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from hpc.envfiles import SECRETS_ENV, check_secrets_file, read_dotenv, resolve_dotenv_path
from hpc.errors import LaunchError
from hpc.options import LaunchOptions
from hpc.profiles import ClusterProfile, detect_profile, get_profile
from hpc.spec import Array, Body, Dependency, Job, Prelude, Resources, Tunnel, check_job_name, parse_dependency
from hpc.timefmt import format_time, parse_time

#: Networks that never go through the tunnel (cluster-internal traffic), unless the profile says otherwise.
PRIVATE_NETWORKS = ["127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]


@dataclass(frozen=True)
class Limits:
    """What the backend allows, asked once per launch (defaults in a dry run)."""

    max_array_size: int = 1001


@dataclass(frozen=True)
class Context:
    profile: ClusterProfile
    env: dict[str, str]  # exported by every job (no secrets: those are sourced by path)
    secrets_path: Path | None
    experiments_dir: Path
    workdir: Path
    tunnel: Tunnel | None = None


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


def resolve_resources(p: ClusterProfile, *, partition: str | None = None, account: str | None = None,
                      qos: str | None = None, time_limit: str | None = None, nodes: int = 1,
                      gpus_per_node: int | None = None, cpus: int | None = None) -> Resources:
    """Resources for one job: a given value > the profile > built-in defaults, checked against the profile.

    gpus_per_node None means all of a node's GPUs; 0 means a CPU job that takes the whole node, or
    `cpus` CPUs of it (with the same share of its memory).
    """
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
    return Resources(
        nodes=nodes,
        gpus_per_node=gpus if p.gpu_request != "none" else 0,
        cpus_per_node=max(1, int(p.cpus_per_node * share)),
        mem=_scaled_memory(p.mem_per_node, share),
        time_limit=format_time(seconds),
        partition=partition,
        account=account or p.account,
        qos=qos or p.qos,
    )


@dataclass(frozen=True)
class Launch:
    """One launch: its options, shared context, job name and experiment directory; the builders' one argument."""

    opts: LaunchOptions
    ctx: Context
    job_name: str
    limits: Limits = field(default_factory=Limits)

    @classmethod
    def create(cls, opts: LaunchOptions, default_name: Callable[[Context], str], environ: Mapping[str, str],
               limits: Limits = Limits()) -> "Launch":
        ctx = resolve_context(opts, environ)
        return cls(opts, ctx, opts.job_name or default_name(ctx), limits)

    @property
    def profile(self) -> ClusterProfile:
        return self.ctx.profile

    @property
    def experiment_dir(self) -> Path:
        return self.ctx.experiments_dir / self.job_name

    def user_dependencies(self) -> tuple[Dependency, ...]:
        """--dependency, for the launch's first job(s)."""
        return tuple(parse_dependency(self.opts.dependency)) if self.opts.dependency else ()

    def resources(self, **given: object) -> Resources:
        """resolve_resources on this launch's profile (see there for the keywords)."""
        return resolve_resources(self.profile, **given)  # type: ignore[arg-type]

    def job(self, key: str, body: Body, resources: Resources, *, job_type: str | None = None, name: str | None = None,
            dependencies: tuple[Dependency, ...] = (), array: Array | None = None, requeue: bool = False,
            offline: bool | None = None, extra_env: Mapping[str, str] = {}) -> Job:
        """One job with the launch's environment prelude.

        name defaults to <job name>_<key>; offline defaults to the profile (compute nodes without internet)
        unless --tunnel brings the internet to the job; a job on a partition with internet passes False.
        """
        if offline is None:
            offline = not self.profile.internet and self.ctx.tunnel is None
        env = {**self.ctx.env, "HPC_EXPERIMENT_DIR": str(self.experiment_dir), **extra_env}
        prelude = Prelude(env=env, secrets_path=self.ctx.secrets_path, offline=offline, tunnel=self.ctx.tunnel,
                          workdir=self.ctx.workdir)
        return Job(key=key, job_type=job_type or key, name=check_job_name(name or f"{self.job_name}_{key}"),
                   resources=resources, prelude=prelude, body=body, dependencies=dependencies, array=array,
                   requeue=requeue)
