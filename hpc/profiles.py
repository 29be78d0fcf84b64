"""Cluster profiles: one YAML file per cluster, validated on load, and cluster detection."""

from __future__ import annotations

import dataclasses
import os
import re
import typing
from dataclasses import field
from pathlib import Path

from hpc import data_dir
from hpc.errors import LaunchError
from hpc.placeholders import fill
from hpc.readers import read_yaml, type_name, type_ok
from hpc.records import record
from hpc.secret_rule import check_config
from hpc.timefmt import parse_time

#: Directory of the profiles shipped with hpc-launch.
BUILTIN_DIR = data_dir("cluster_profiles")
#: Colon-separated list of extra profile directories; their files win over the built-in ones.
PATH_ENV = "HPC_LAUNCH_PROFILES"

#: Placeholders an eval_command argument may use (filled per launch, then shell-quoted).
EVAL_PLACEHOLDERS = {"model": "", "tasks": "", "output": "", "hpc_root": "", "nodes": "", "gpus_per_node": ""}

_SBATCH_SAFE = re.compile(r"[A-Za-z0-9_.,:+=@%/-]+")
_MEMORY = re.compile(r"(\d+(?:\.\d+)?)([KMGT]?)", re.IGNORECASE)
_MEGABYTES = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 * 1024}


def megabytes(mem: str) -> float:
    """A SLURM memory size (512G, 8000M, 8000 in megabytes, 0.5T) in megabytes; ValueError for anything else."""
    match = _MEMORY.fullmatch(mem)
    if not match:
        raise ValueError(f"{mem!r} is not a memory size")
    return float(match.group(1)) * _MEGABYTES[match.group(2).upper()]

#: Clusters whose profiles were removed: `--cluster NAME` says why and what to use instead.
RETIRED = {
    "dip": "was retired: it has no SLURM, and its hostname pattern (*.dip.tu-dresden.de) matched any TU Dresden "
           "campus machine; use --cluster alpha or capella (ZIH's SLURM clusters), or a profile of your own in "
           "$HPC_LAUNCH_PROFILES",
}


@record(eq=False)
class PartitionLimits:
    """One partition's limits (profile key `partitions`); None is a limit the profile does not know."""

    max_nodes: int | None = None
    max_time: str | None = None
    time_by_nodes: tuple[tuple[int, str], ...] = ()  # (up to this many nodes, max time), node counts ascending

    def time_bin(self, nodes: int) -> tuple[str | None, int, int | None]:
        """The max time of a job of `nodes` nodes, with its bin's first and last node count (None: open-ended)."""
        first = 1
        for up_to, limit in self.time_by_nodes:
            if nodes <= up_to:
                return limit, first, up_to
            first = up_to + 1
        return self.max_time, first, self.max_nodes


@record(eq=False)
class SlurmSettings:
    """A profile's `slurm:` section: how jobs are asked of SLURM there, read only by the SLURM backend."""

    cluster_names: list[str] = field(default_factory=list)  # ClusterName values (scontrol show config)
    gpu_request: str = "gres"  # gres: --gres=gpu:N, gpus_per_node: --gpus-per-node=N, none: nodes come whole
    sbatch_extra: list[str] = field(default_factory=list)
    export_none: bool = True  # --export=NONE; false where the site forbids --export (TACC)
    gpu_constraints: dict[str, list[str]] = field(default_factory=dict)  # GPU type -> sbatch options selecting it


@record(eq=False)
class ClusterProfile:
    """What the launcher needs to know about one cluster (see cluster_profiles/README.md): the site's facts, and in
    `slurm` how SLURM is asked for them."""

    name: str
    description: str
    hostname_patterns: list[str]
    partition: str | None
    account: str | None
    qos: str | None
    gpus_per_node: int
    gpu_type: str | None
    cpus_per_node: int
    mem_per_node: str | None
    max_time: str
    default_time: str
    internet: bool
    modules: list[str]
    env_activation: str
    dotenv: str
    master_addr_suffix: str
    train_defaults: dict[str, object]
    max_nodes: int | None = None
    signal_seconds: int = 300
    eval_command: list[str] | None = None
    internet_partition: str | None = None
    inference_server_command: list[str] | None = None
    tunnel_host: str | None = None
    tunnel_direct: list[str] | None = None
    partitions: dict[str, PartitionLimits] = field(default_factory=dict)
    account_required: bool = False
    gpu_types: list[str] = field(default_factory=list)  # the GPU types --gpu_type can pick (gpu_type: the default)
    slurm: SlurmSettings = field(default_factory=SlurmSettings)
    source: Path = field(default=Path(), compare=False)

    @property
    def max_seconds(self) -> int:
        return parse_time(self.max_time, f"{self.name}: max_time")

    def limits(self, partition: str | None) -> PartitionLimits:
        """The limits of `partition`; the default partition's max_time is the top-level one."""
        own = self.partitions.get(partition or "", PartitionLimits())
        if partition != self.partition:
            return own
        return PartitionLimits(max_nodes=own.max_nodes, max_time=self.max_time, time_by_nodes=own.time_by_nodes)


_GPU_REQUESTS = ("gres", "gpus_per_node", "none")
_FIELDS = {f.name: f for f in dataclasses.fields(ClusterProfile) if f.name != "source"}
_OPTIONAL = {name for name, f in _FIELDS.items()
             if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING}
_HINTS = typing.get_type_hints(ClusterProfile)
_SLURM_HINTS = typing.get_type_hints(SlurmSettings)
#: Keys that moved into the `slurm:` section (old name -> its name there).
_MOVED = {"slurm_cluster_names": "cluster_names", "gpu_request": "gpu_request", "sbatch_extra": "sbatch_extra",
          "export_none": "export_none"}


def parse_profile(data: object, source: Path) -> ClusterProfile:
    """Validate one profile's YAML data; every problem names the file and the key."""
    where = str(source)
    if not isinstance(data, dict):
        raise LaunchError(f"{where}: a cluster profile must be a YAML mapping of keys to values")
    moved = next((key for key in data if key in _MOVED), None)
    if moved:
        raise LaunchError(f"{where}: key {moved!r} moved into the slurm: section; write it as slurm: "
                          f"{{{_MOVED[moved]}: ...}} (see cluster_profiles/README.md)")
    if isinstance(data.get("gpu_types"), dict):
        raise LaunchError(f"{where}: gpu_types is now a list of GPU type names; their sbatch options go in slurm: "
                          "{gpu_constraints: {NAME: [OPTIONS]}} (see cluster_profiles/README.md)")
    unknown = sorted(str(key) for key in data if key not in _FIELDS)
    if unknown:
        raise LaunchError(
            f"{where}: unknown key {unknown[0]!r}; valid keys are {', '.join(_FIELDS)}"
        )
    missing = [k for k in _FIELDS if k not in data and k not in _OPTIONAL]
    if missing:
        raise LaunchError(f"{where}: missing key {missing[0]!r} (see cluster_profiles/README.md)")
    if "partitions" in data:
        data = {**data, "partitions": _parse_partitions(data["partitions"], where)}
    if "slurm" in data:
        data = {**data, "slurm": _parse_slurm(data["slurm"], where)}
    for key, value in data.items():
        if not type_ok(value, _HINTS[key]):
            raise LaunchError(
                f"{where}: key {key!r} must be {type_name(_HINTS[key])}, got {type(value).__name__} {value!r}"
            )
    check_config(where, {k: v for k, v in data.items() if k not in ("partitions", "slurm")})  # they reach scripts
    profile = ClusterProfile(**data, source=source)
    _check_values(profile, where)
    return profile


def _parse_slurm(raw: object, where: str) -> SlurmSettings:
    """The `slurm:` section, each key checked like a top-level one."""
    if not isinstance(raw, dict):
        raise LaunchError(f"{where}: key 'slurm' must be a mapping of SLURM settings ({', '.join(_SLURM_HINTS)})")
    unknown = sorted(str(key) for key in raw if key not in _SLURM_HINTS)
    if unknown:
        raise LaunchError(f"{where}: unknown key slurm.{unknown[0]}; valid keys are {', '.join(_SLURM_HINTS)}")
    for key, value in raw.items():
        if not type_ok(value, _SLURM_HINTS[key]):
            raise LaunchError(f"{where}: key 'slurm.{key}' must be {type_name(_SLURM_HINTS[key])}, got "
                              f"{type(value).__name__} {value!r}")
    check_config(f"{where}: slurm", raw)
    settings = SlurmSettings(**raw)
    if settings.gpu_request not in _GPU_REQUESTS:
        raise LaunchError(f"{where}: key 'slurm.gpu_request' must be one of {', '.join(_GPU_REQUESTS)}")
    return settings


_PARTITION_KEYS = ("max_nodes", "max_time", "time_by_nodes")


def _parse_partitions(raw: object, where: str) -> dict[str, PartitionLimits]:
    """The `partitions` mapping: name -> {max_nodes, max_time, time_by_nodes: [[up to nodes, time], ...]}."""
    if not isinstance(raw, dict):
        raise LaunchError(f"{where}: key 'partitions' must map partition names to their limits")
    parsed: dict[str, PartitionLimits] = {}
    for name, entry in raw.items():
        at = f"{where}: partitions.{name}"
        if not isinstance(name, str) or not _SBATCH_SAFE.fullmatch(name):
            raise LaunchError(f"{where}: partition name {name!r} is not one sbatch can take")
        if not isinstance(entry, dict) or set(entry) - set(_PARTITION_KEYS):
            raise LaunchError(f"{at}: must be a mapping with keys among {', '.join(_PARTITION_KEYS)}")
        max_nodes, max_time = entry.get("max_nodes"), entry.get("max_time")
        if max_nodes is not None and (not type_ok(max_nodes, int) or max_nodes < 1):
            raise LaunchError(f"{at}.max_nodes must be a whole number of nodes, at least 1 (got {max_nodes!r})")
        if max_time is not None and not isinstance(max_time, str):
            raise LaunchError(f'{at}.max_time must be a quoted SLURM time such as "24:00:00" (got {max_time!r})')
        if max_time is not None:
            parse_time(max_time, f"{at}.max_time")
        bins = entry.get("time_by_nodes", [])
        if not isinstance(bins, list) or not all(
                isinstance(b, list) and len(b) == 2 and type_ok(b[0], int) and isinstance(b[1], str) for b in bins):
            raise LaunchError(f"{at}.time_by_nodes must be a list of [up to N nodes, max time] pairs, "
                              'e.g. [[91, "02:00:00"], [183, "06:00:00"]]')
        counts = [b[0] for b in bins]
        if counts != sorted(set(counts)) or (counts and (counts[0] < 1 or (max_nodes or counts[-1]) < counts[-1])):
            raise LaunchError(f"{at}.time_by_nodes: node counts must rise, from 1 up to at most max_nodes")
        for _, limit in bins:
            parse_time(limit, f"{at}.time_by_nodes")
        parsed[name] = PartitionLimits(max_nodes, max_time, tuple((n, t) for n, t in bins))
    return parsed


def _check_limits(p: ClusterProfile, where: str) -> None:
    own = p.partitions.get(p.partition or "")
    if own and own.max_time is not None and parse_time(own.max_time) != p.max_seconds:
        raise LaunchError(f"{where}: partitions.{p.partition}.max_time {own.max_time} contradicts max_time "
                          f"{p.max_time} of the default partition; give it once, as max_time")
    for name in p.partitions:
        limits = p.limits(name)
        if p.max_nodes is not None and (limits.max_nodes or 0) > p.max_nodes:
            raise LaunchError(f"{where}: partitions.{name}.max_nodes exceeds max_nodes {p.max_nodes}")
        if limits.max_time and any(parse_time(t) > parse_time(limits.max_time) for _, t in limits.time_by_nodes):
            raise LaunchError(f"{where}: partitions.{name}.time_by_nodes has a time above its max_time "
                              f"{limits.max_time}")
    if p.gpu_types and p.gpu_type not in p.gpu_types:
        raise LaunchError(f"{where}: key 'gpu_type' must name the default of gpu_types ({', '.join(p.gpu_types)})")
    unknown = [name for name in p.slurm.gpu_constraints if name not in p.gpu_types]
    if unknown:
        raise LaunchError(f"{where}: slurm.gpu_constraints names {unknown[0]!r}, which gpu_types does not list")


def _check_values(p: ClusterProfile, where: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", p.name):
        raise LaunchError(f"{where}: key 'name' {p.name!r} may hold only letters, digits, '.', '_' and '-' (it is "
                          "written into job scripts); rename the profile and its file")
    if p.name != source_stem(p.source):
        raise LaunchError(f"{where}: key 'name' is {p.name!r} but the file is {p.source.name}; make them match")
    if p.gpus_per_node < 0 or p.cpus_per_node < 1:
        raise LaunchError(f"{where}: gpus_per_node must be >= 0 and cpus_per_node >= 1")
    for key in ("partition", "account", "qos"):
        value = getattr(p, key)
        if value and not _SBATCH_SAFE.fullmatch(value):
            raise LaunchError(f"{where}: key {key!r} has characters sbatch cannot take: {value!r}")
    if p.mem_per_node is not None and not _MEMORY.fullmatch(p.mem_per_node):
        raise LaunchError(f"{where}: key 'mem_per_node' {p.mem_per_node!r} is not a memory size; write it as e.g. "
                          "512G or 8000M")
    if not re.fullmatch(r"[A-Za-z0-9.-]*", p.master_addr_suffix):
        raise LaunchError(f"{where}: key 'master_addr_suffix' may hold only letters, digits, '.' and '-'")
    if p.tunnel_host and not re.fullmatch(r"(ssh://)?([\w.-]+@)?[\w.{}-]+(:\d+)?", p.tunnel_host):
        raise LaunchError(f"{where}: key 'tunnel_host' must be an ssh destination such as user@host, host:port "
                          "or {login}i ({login} is the login node the launch runs on)")
    if p.tunnel_direct:
        _check_networks(p.tunnel_direct, where)
    if p.signal_seconds < 120:
        raise LaunchError(f"{where}: signal_seconds must be at least 120 (SLURM may signal up to 60 s early)")
    fill(p.eval_command or [], EVAL_PLACEHOLDERS, f"{where}: eval_command")
    if parse_time(p.default_time, f"{where}: default_time") > p.max_seconds:
        raise LaunchError(f"{where}: default_time {p.default_time} exceeds max_time {p.max_time}")
    _check_limits(p, where)
    for pattern in p.hostname_patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise LaunchError(f"{where}: hostname pattern {pattern!r} is not a valid regex ({exc})") from None


def _check_networks(networks: list[str], where: str) -> None:
    import ipaddress  # only for profiles with tunnel_direct

    for net in networks:
        try:
            ipaddress.ip_network(net)
        except ValueError:
            raise LaunchError(f"{where}: tunnel_direct entry {net!r} is not a network such as 10.0.0.0/8") from None


def source_stem(path: Path) -> str:
    return path.name.removesuffix(".yaml")


def profile_dirs(environ: typing.Mapping[str, str] = os.environ) -> list[Path]:
    """User directories first (they override), then the built-in profiles."""
    extra = [Path(p).expanduser() for p in environ.get(PATH_ENV, "").split(os.pathsep) if p]
    return [*extra, BUILTIN_DIR]


def profile_files(environ: typing.Mapping[str, str] = os.environ) -> dict[str, Path]:
    """Cluster name -> the file that defines it (first directory wins)."""
    found: dict[str, Path] = {}
    for directory in profile_dirs(environ):
        if not directory.is_dir():
            if directory != BUILTIN_DIR:
                raise LaunchError(f"{PATH_ENV} names {directory}, which is not a directory")
            continue
        for path in sorted(directory.glob("*.yaml")):
            found.setdefault(source_stem(path), path)
    return found


def load_profile(path: Path) -> ClusterProfile:
    data = read_yaml(path, "cluster profile", f"fix it or remove it from ${PATH_ENV}", expect=None)
    return parse_profile(data, path)


def get_profile(name: str, environ: typing.Mapping[str, str] = os.environ) -> ClusterProfile:
    files = profile_files(environ)
    if name not in files and name in RETIRED:
        raise LaunchError(f"cluster {name!r} {RETIRED[name]}")
    if name not in files:
        raise LaunchError(f"unknown cluster {name!r}; known clusters: {', '.join(sorted(files))}")
    return load_profile(files[name])


def all_profiles(environ: typing.Mapping[str, str] = os.environ) -> list[ClusterProfile]:
    return [load_profile(path) for path in profile_files(environ).values()]
