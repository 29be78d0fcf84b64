"""`hpc-launch ssh-pool POOL --host H ... --user U --identity_file KEY`: machines you can ssh to, as a SkyPilot SSH
node pool (infra `ssh/POOL`).

The pool is merged into SkyPilot's node pool file (~/.sky/ssh_node_pools.yaml unless --file): other pools are kept,
an existing pool is replaced only with --replace. The result is checked by SkyPilot's own loader before it
atomically takes the file's place (mode 0600 when it holds a password); on any error the file is unchanged.
Comments in the file are not kept.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import stat
import tempfile
from pathlib import Path

import yaml

from hpc.errors import LaunchError
from hpc.records import record

_POOL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?")
_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?")
_USER = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*\$?")


def _host(text: str) -> str:
    """A hostname, an ssh config alias or an IP address (v4 or v6)."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    if len(text) > 253 or not _HOSTNAME.fullmatch(text):
        raise LaunchError(f"--host {text!r} is not a hostname or IP address (e.g. 10.0.0.5, gpu1.example.com, "
                          "or USER@HOST)")
    return text


def _user(text: str, flag: str) -> str:
    if not _USER.fullmatch(text):
        raise LaunchError(f"{flag} {text!r} is not a user name")
    return text


@record(eq=True)
class Pool:
    """One SSH node pool as SkyPilot reads it: hosts (a name, or {ip, user} for USER@HOST), user, identity_file,
    and password (for sudo on the hosts)."""

    name: str
    hosts: tuple[str | dict[str, str], ...]
    user: str
    identity_file: Path
    password: str | None = None

    @classmethod
    def from_arguments(cls, name: str, hosts: list[str], user: str, identity_file: str,
                       password_env: str | None) -> "Pool":
        if not _POOL.fullmatch(name):
            raise LaunchError(f"pool name {name!r}: use letters, digits, '-', '_' and '.' (it becomes ssh/{name})")
        if not hosts:
            raise LaunchError("give the pool's machines with --host HOST (once per machine)")
        user = _user(user, "--user")
        entries: list[str | dict[str, str]] = []
        seen: set[str] = set()
        for text in hosts:
            login, at, address = text.rpartition("@")
            ip = _host(address)
            if ip in seen:
                raise LaunchError(f"--host {text!r} is given twice")
            seen.add(ip)
            who = _user(login, f"--host {text!r}: the part before @") if at else user
            entries.append(ip if who == user else {"ip": ip, "user": who})
        key = Path(identity_file).expanduser().absolute()
        if not key.is_file():
            raise LaunchError(f"--identity_file {identity_file}: no such file (the private key that logs in to the "
                              "hosts)")
        if key.suffix == ".pub":
            raise LaunchError(f"--identity_file {identity_file} is a public key; give the private key")
        password = None
        if password_env is not None:
            password = os.environ.get(password_env)
            if not password:
                raise LaunchError(f"--password_env {password_env}: that environment variable is not set")
        return cls(name, tuple(entries), user, key, password)

    def config(self) -> dict[str, object]:
        config: dict[str, object] = {"hosts": list(self.hosts), "user": self.user,
                                     "identity_file": str(self.identity_file)}
        if self.password is not None:
            config["password"] = self.password
        return config


def _skypilot_error(exc: BaseException) -> str:
    from hpc.backends.skypilot.lifecycle import first_line

    return first_line(exc).removeprefix("ValueError: ")


def _read_pools(path: Path) -> dict:
    """The pools already in the file, read by SkyPilot's loader (which refuses duplicate keys)."""
    from sky.ssh_node_pools import utils

    if not path.exists():
        return {}
    try:
        pools = utils.load_ssh_targets(str(path))
    except ValueError as exc:
        raise LaunchError(f"{path}: SkyPilot cannot read it ({_skypilot_error(exc)}); fix it first") from None
    if pools is None:
        return {}
    if not isinstance(pools, dict):
        raise LaunchError(f"{path}: not a mapping of pool names to pools; fix it first")
    return pools


def _check_with_skypilot(path: Path, name: str) -> None:
    """SkyPilot's own loader on the written file: the pool is found, its hosts and key resolve (offline: ssh -G)."""
    from sky.ssh_node_pools import utils

    try:
        config = utils.get_cluster_config(utils.load_ssh_targets(str(path)), name, file_path=str(path))[name]
        utils.prepare_hosts_info(name, config)
    except ValueError as exc:
        raise LaunchError(f"SkyPilot refuses the pool {name}: {_skypilot_error(exc)}") from None


def _has_password(value: object) -> bool:
    if isinstance(value, dict):
        return "password" in value or any(_has_password(v) for v in value.values())
    return isinstance(value, list) and any(_has_password(v) for v in value)


def write_pool(pool: Pool, path: Path, replace: bool) -> bool:
    """Merge the pool into the file (atomically); whether it replaced a pool of that name."""
    target = path.expanduser().resolve()
    pools = _read_pools(target)
    existed = pool.name in pools
    if existed and not replace:
        raise LaunchError(f"{target} already has a pool {pool.name}; pass --replace to overwrite it")
    pools[pool.name] = pool.config()
    mode = stat.S_IMODE(target.stat().st_mode) if target.exists() else 0o644
    if _has_password(pools):
        mode = 0o600
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w") as out:
            os.fchmod(out.fileno(), mode)
            yaml.safe_dump(pools, out, sort_keys=False, default_flow_style=False)
        _check_with_skypilot(Path(temp), pool.name)
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return existed


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pool", metavar="POOL", help="the pool's name: launch on it with --cloud-provider ssh/POOL")
    p.add_argument("--host", "--hosts", dest="hosts", action="append", default=[], metavar="HOST",
                   help="a machine: hostname, IP or ssh config alias, or USER@HOST for another user (repeat)")
    p.add_argument("--user", required=True, help="the user that logs in to the hosts")
    p.add_argument("--identity_file", "--identity-file", dest="identity_file", required=True, metavar="KEY",
                   help="the private key that logs in to the hosts")
    p.add_argument("--password_env", "--password-env", dest="password_env", metavar="VAR",
                   help="the environment variable holding the sudo password of the hosts, if sudo needs one "
                        "(the file then becomes mode 0600)")
    p.add_argument("--file", type=Path, default=None,
                   help="the node pool file (default: SkyPilot's ~/.sky/ssh_node_pools.yaml)")
    p.add_argument("--replace", action="store_true", help="overwrite a pool of that name")


def run(args: argparse.Namespace) -> int:
    pool = Pool.from_arguments(args.pool, args.hosts, args.user, args.identity_file, args.password_env)
    from hpc.backends.skypilot.lifecycle import sky

    sky("hpc-launch ssh-pool")
    from sky.ssh_node_pools import constants

    default = Path(constants.DEFAULT_SSH_NODE_POOLS_PATH)
    path = args.file.expanduser().absolute() if args.file else default
    replaced = write_pool(pool, path, args.replace)
    hosts = len(pool.hosts)
    print(f"hpc-launch: {'replaced' if replaced else 'added'} SSH node pool {pool.name} ({hosts} host"
          f"{'s' if hosts != 1 else ''}) in {path}; SkyPilot's loader accepts it")
    upload = "" if path.resolve() == default.resolve() else f" -f {path}"
    print("next:\n"
          f"  sky ssh up --infra {pool.name}{upload}   # SkyPilot installs its runtime (k3s) on the hosts, with sudo\n"
          "  sky check ssh   # the pool is enabled\n"
          f"  hpc-launch --backend skypilot --cloud-provider ssh/{pool.name} ...   # launches on it")
    return 0
