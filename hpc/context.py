"""What every job of a launch shares: options, cluster profile, environment, secrets and resources.

A Launch bundles them with the job name and experiment directory; job builders take one Launch.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

from hpc.backends import Limits
from hpc.envfiles import SECRETS_ENV, check_secrets_file, read_dotenv, resolve_dotenv_path
from hpc.errors import LaunchError
from hpc.options import LaunchOptions, PathOptions
from hpc.profiles import ClusterProfile, get_profile, megabytes
from hpc.records import record
from hpc.spec import (LONGEST_SUFFIX, MAX_JOB_NAME, Array, Body, Dependency, Job, Prelude, Resources, Tunnel,
                      check_job_name, parse_dependency)
from hpc.timefmt import format_time, parse_time

#: Networks that never go through the tunnel (cluster-internal traffic), unless the profile says otherwise.
PRIVATE_NETWORKS = ["127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]


@record(eq=False)
class Context:
    """Where a launch runs: the cluster profile, the dotenv values every job exports, the user's secrets file (by
    path), the experiments directory and the working directory."""

    profile: ClusterProfile
    env: dict[str, str]  # exported by every job (no secrets: those are sourced by path)
    secrets_path: Path | None
    experiments_dir: Path
    workdir: Path
    tunnel: Tunnel | None = None


def resolve_context(opts: LaunchOptions, environ: Mapping[str, str] = os.environ) -> Context:
    if opts.cluster:
        profile = get_profile(opts.cluster, environ)
    else:  # only a SLURM launch detects its cluster (a SkyPilot one names the `cloud` profile)
        from hpc.backends.slurm.detect import detect_profile

        profile = detect_profile(environ)
    dotenv_path = resolve_dotenv_path(opts.dotenv or profile.dotenv, profile.source)
    env = read_dotenv(dotenv_path)
    for name, variable in PathOptions.VARIABLES.items():
        if getattr(opts, name):
            env[variable] = str(Path(getattr(opts, name)).expanduser().absolute())
    if opts.job_creator:
        env["HPC_JOB_CREATOR"] = opts.job_creator
    secrets = opts.secrets_env or environ.get(SECRETS_ENV) or env.get(SECRETS_ENV)
    secrets_path = check_secrets_file(secrets) if secrets else None
    if secrets_path:
        env[SECRETS_ENV] = str(secrets_path)
    experiments = Path(opts.experiments_dir or env.get("EXPERIMENTS_DIR") or "experiments").expanduser().absolute()
    check_experiments_dir(experiments)
    return Context(
        profile=profile,
        env=env,
        secrets_path=secrets_path,
        experiments_dir=experiments,
        workdir=Path.cwd(),
        tunnel=_tunnel(profile) if opts.tunnel else None,
    )


def check_experiments_dir(path: Path) -> None:
    """Refuse, in one line, an experiments directory that cannot take a new experiment: a file on its way, a pseudo
    filesystem (/proc, /sys), no write access (probed with a directory created and removed) or no free space. Called
    before anything is fetched, written or submitted; leaves nothing behind."""
    import tempfile

    fix = "pass --experiments_dir DIR (default: EXPERIMENTS_DIR from the dotenv, else ./experiments)"
    existing = path
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise LaunchError(f"experiments dir {path}: {existing} is {'a file' if existing.exists() else 'a broken link'}, "
                          f"not a directory; {fix}")
    pseudo = _pseudo_filesystem(existing.resolve())
    if pseudo:
        raise LaunchError(f"experiments dir {path} is on a {pseudo} pseudo filesystem, which holds no files; {fix}")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".hpc-launch-probe-", dir=existing))
        space = os.statvfs(existing)
    except OSError as exc:
        raise LaunchError(f"experiments dir {path}: cannot create anything in {existing} ({exc.strerror}); {fix}") from None
    if space.f_bavail * space.f_frsize < 1 << 20:
        raise LaunchError(f"experiments dir {path}: the filesystem of {existing} is full; free space or {fix}")


_PSEUDO = {"proc", "sysfs", "cgroup", "cgroup2", "devtmpfs", "devpts", "debugfs", "tracefs", "securityfs", "pstore",
           "bpf", "configfs", "efivarfs", "mqueue", "hugetlbfs", "binfmt_misc", "fusectl", "autofs"}


def _pseudo_filesystem(path: Path) -> str | None:
    """The type of the pseudo filesystem `path` is on (Linux's /proc/self/mounts), else None."""
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return None
    best, kind = "", None
    for line in mounts:
        fields = line.split()
        point = fields[1].replace("\\040", " ") if len(fields) > 2 else ""
        inside = str(path) == point or str(path).startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fields[2]
    return kind if kind in _PSEUDO else None


def _tunnel(profile: ClusterProfile) -> Tunnel:
    import ipaddress
    import socket

    if not profile.tunnel_host:
        raise LaunchError(f"--tunnel: the {profile.name} profile has no tunnel_host; add the ssh destination to it")
    host = profile.tunnel_host.replace("{login}", socket.gethostname().split(".")[0])
    nets = [ipaddress.ip_network(n) for n in (PRIVATE_NETWORKS if profile.tunnel_direct is None else profile.tunnel_direct)]
    return Tunnel(host=host, direct=[(str(n.network_address), str(n.netmask)) for n in nets])


def _scaled_memory(mem: str | None, share: float) -> str | None:
    """A share of the node's memory ("512G" * 0.25 -> "131072M"), for jobs using part of a node."""
    if not mem or share >= 1:
        return mem
    return f"{max(1, int(megabytes(mem) * share))}M"  # a profile's mem_per_node is checked when it is loaded


def resolve_resources(p: ClusterProfile, *, partition: str | None = None, account: str | None = None,
                      qos: str | None = None, time_limit: str | None = None, nodes: int = 1,
                      gpus_per_node: int | None = None, cpus: int | None = None,
                      gpu_type: str | None = None, cpus_per_node: int | None = None,
                      require_account: bool = True) -> Resources:
    """Resources for one job: a given value > the profile > built-in defaults, checked against the profile.

    gpus_per_node None means all of a node's GPUs; 0 means a CPU job that takes the whole node, or
    `cpus` CPUs of it (with the same share of its memory). The limits are those of the partition the job
    uses (node cap, time by node count); without a time_limit, default_time shortened to fit them.
    """
    if nodes < 1:
        raise LaunchError(f"--num_nodes must be at least 1 (got {nodes})")
    if p.max_nodes is not None and nodes > p.max_nodes:
        raise LaunchError(f"--num_nodes {nodes} exceeds the {p.max_nodes} nodes a job may use on {p.name}")
    gpus = p.gpus_per_node if gpus_per_node is None else gpus_per_node
    if gpus < 0 or gpus > p.gpus_per_node:
        raise LaunchError(f"--gpus_per_node {gpus} is not possible on {p.name}: its nodes have {p.gpus_per_node} GPUs")
    partition = partition or p.partition
    seconds = _partition_time(p, partition, nodes, time_limit)
    account = account or p.account
    if p.account_required and not account and require_account:
        raise LaunchError(f"{p.name} runs no job without an account: pass --account PROJECT (the project or budget "
                          "to charge; SBATCH_ACCOUNT is not used, since sbatch runs without SBATCH_* variables)")
    share = gpus / p.gpus_per_node if p.gpus_per_node and gpus else 1.0
    if not gpus and cpus is not None:
        share = min(1.0, cpus / p.cpus_per_node)
    if cpus_per_node is not None and not 1 <= cpus_per_node <= p.cpus_per_node:
        raise LaunchError(f"--cpus_per_node {cpus_per_node} is not possible on {p.name}: its nodes have "
                          f"{p.cpus_per_node} CPUs")
    return Resources(
        nodes=nodes,
        gpus_per_node=gpus,
        cpus_per_node=cpus_per_node or max(1, int(p.cpus_per_node * share)),
        mem=_scaled_memory(p.mem_per_node, share),
        time_limit=format_time(seconds),
        partition=partition,
        account=account,
        qos=qos or p.qos,
        gpu_type=_gpu_type(p, gpu_type),
    )


def _partition_time(p: ClusterProfile, partition: str | None, nodes: int, time_limit: str | None) -> int:
    """The job's wall time in seconds, after checking nodes and time against the partition's limits."""
    limits = p.limits(partition)
    where = f"partition {partition or 'default'}"
    if limits.max_nodes is not None and nodes > limits.max_nodes:
        raise LaunchError(f"--num_nodes {nodes} exceeds the {limits.max_nodes} nodes a job may use on {where} of "
                          f"{p.name}; ask for --num_nodes {limits.max_nodes} or fewer")
    seconds = parse_time(time_limit or p.default_time)
    cap, first, last = limits.time_bin(nodes)
    if cap is None:
        return seconds  # a partition the profile does not describe: SLURM judges at submission
    if time_limit is None or seconds <= parse_time(cap):
        return min(seconds, parse_time(cap))
    size = f" for jobs of {first}-{last} nodes" if last else f" for jobs of {first}+ nodes"
    raise LaunchError(
        f"--time_limit {format_time(seconds)} exceeds the {cap} limit of {where}{size if limits.time_by_nodes else ''} "
        f"on {p.name}; ask for --time_limit {cap} or less (jobs can requeue and resume)"
    )


def _gpu_type(p: ClusterProfile, asked: str | None) -> str | None:
    """The profile's name for the GPU type asked for (default: the profile's gpu_type when it has gpu_types)."""
    if asked is None:
        return p.gpu_type if p.gpu_types else None
    known = list(p.gpu_types) or [p.gpu_type or "no GPUs"]
    match = next((name for name in known if name.lower() == asked.lower()), None)
    if match is None:
        raise LaunchError(f"--gpu_type {asked} is not known on {p.name}; known: {', '.join(known)}")
    return match if p.gpu_types else None


@record(eq=False)
class Launch:
    """One launch: its options, shared context, job name and experiment directory; the builders' one argument."""

    opts: LaunchOptions
    ctx: Context
    job_name: str
    limits: Callable[[], Limits] = Limits  # asked only when planning needs it (datagen arrays)

    @classmethod
    def create(cls, opts: LaunchOptions, default_name: Callable[[Context], str], environ: Mapping[str, str],
               limits: Callable[[], Limits] = Limits) -> "Launch":
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
        """resolve_resources on this launch's profile with its --gpu_type (see there for the keywords)."""
        # A dry run previews without the account (pipeline.finish says the real launch needs one).
        return resolve_resources(self.profile, gpu_type=self.gpu_type, require_account=not self.opts.dry_run,
                                 **given)  # type: ignore[arg-type]

    @property
    def gpu_type(self) -> str | None:
        """--gpu_type, or upstream's spelling --gpus_type."""
        one, other = self.opts.gpu_type, self.opts.gpus_type
        if one and other and one != other:
            raise LaunchError(f"--gpu_type {one} and --gpus_type {other} disagree; give only --gpu_type")
        return one or other

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
        full = name or f"{self.job_name}_{key}"
        if len(full) > MAX_JOB_NAME and full != self.job_name:
            raise LaunchError(f"--job_name {self.job_name!r} is too long for this launch: its {key} job would be named "
                              f"{full!r} ({len(full)} characters, at most {MAX_JOB_NAME}); pass a --job_name of at "
                              f"most {MAX_JOB_NAME - LONGEST_SUFFIX} characters")
        return Job(key=key, job_type=job_type or key, name=check_job_name(full),
                   resources=resources, prelude=prelude, body=body, dependencies=dependencies, array=array,
                   requeue=requeue)
