"""Which cluster this login node belongs to: SLURM's ClusterName (a profile's slurm.cluster_names), then the
hostname (its hostname_patterns)."""

from __future__ import annotations

import os
import re
import typing

from hpc.backends.slurm import show_config
from hpc.errors import LaunchError
from hpc.profiles import PATH_ENV, ClusterProfile, all_profiles


def match_cluster(profiles: list[ClusterProfile], cluster_name: str | None,
                  hostnames: list[str]) -> ClusterProfile | None:
    """SLURM's ClusterName first, then full-match hostname patterns; None when nothing matches."""
    if cluster_name:
        for p in profiles:
            if cluster_name in p.slurm.cluster_names:
                return p
    for host in hostnames:
        for p in profiles:
            if any(re.fullmatch(pattern, host) for pattern in p.hostname_patterns):
                return p
    return None


def cluster_name() -> str | None:
    """ClusterName from `scontrol show config`, or None where SLURM is not reachable."""
    match = re.search(r"^ClusterName\s*=\s*(\S+)", show_config(), re.MULTILINE)
    return match.group(1) if match else None


def detect_profile(environ: typing.Mapping[str, str] = os.environ) -> ClusterProfile:
    """The profile of the cluster this node belongs to; LaunchError naming what was seen when none matches."""
    import socket

    profiles = all_profiles(environ)
    hostnames = list(dict.fromkeys([socket.gethostname(), socket.getfqdn()]))
    cluster = cluster_name()
    found = match_cluster(profiles, cluster, hostnames)
    if found is None:
        seen = f"SLURM ClusterName {cluster!r}, " if cluster else "no SLURM ClusterName, "
        raise LaunchError(
            f"cannot tell which cluster this is ({seen}hostname {hostnames[0]!r}); pass --cluster NAME "
            f"(known: {', '.join(p.name for p in profiles)}) or add a profile to ${PATH_ENV}"
        )
    return found
