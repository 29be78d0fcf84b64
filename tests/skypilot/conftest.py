"""SkyPilot from the cloud venv (scripts/skypilot_fixture.sh install), hermetic: a fresh HOME, the local SLURM
cluster as SkyPilot's Slurm infra over loopback ssh, and the network jail. `sky_fixture` brings it up once per
session and down at the end; every test using it fails if the jail refused a connection."""

from __future__ import annotations

import os
import socket
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hpc import ROOT
from helpers import Result

CLOUD_VENV = Path(os.environ.get("HPC_CLOUD_VENV", "/opt/hpc-launch/cloud-venv"))
FIXTURE = ROOT / "scripts" / "skypilot_fixture.sh"
#: The defaults of scripts/skypilot_fixture.sh: never used here, so a fixture brought up by hand keeps running.
HAND_PORTS = (2231, 28581)


def free_ports(count: int) -> list[int]:
    """Ports nothing listens on now (the kernel's choice, all different), never the fixture's default ones: no
    fixed port that another run, or anything else on the machine, may hold."""
    sockets: list[socket.socket] = []
    try:
        while len(sockets) < count:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)  # held until all are picked, so no two are the same
            if s.getsockname()[1] in HAND_PORTS:
                sockets.remove(s)
                s.close()
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def unique_name(label: str) -> str:
    """A SkyPilot cluster name of this test only (other tests and runs of the suite share the SLURM queue)."""
    return f"hpc-e2e-{label}-{uuid.uuid4().hex[:6]}"


def cloud_python() -> Path:
    python = CLOUD_VENV / "bin" / "python"
    if not (CLOUD_VENV / "bin" / "sky").exists():
        pytest.fail(f"no SkyPilot in {CLOUD_VENV}; run: bash scripts/skypilot_fixture.sh install")
    return python


def run_cloud(*args: str, env: dict[str, str] | None = None, cwd: Path = ROOT, timeout: float = 900) -> Result:
    """The cloud venv's Python on this checkout (`-m hpc.launch ...` or `-c CODE`)."""
    full = {**os.environ, **(env or {})}
    full["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), full.get("PYTHONPATH", "")) if p)
    proc = subprocess.run([str(cloud_python()), *args], capture_output=True, text=True, env=full, cwd=cwd,
                          timeout=timeout)
    return Result(proc.returncode, proc.stdout, proc.stderr)


@dataclass
class SkyFixture:
    directory: Path
    env: dict[str, str]  # HOME, PATH, ports, the jail (PYTHONPATH, NETJAIL_LOG), ...

    def jail_log(self) -> str:
        return Path(self.env["NETJAIL_LOG"]).read_text() if Path(self.env["NETJAIL_LOG"]).exists() else ""

    def launch(self, *args: str, cwd: Path = ROOT) -> Result:
        return run_cloud("-m", "hpc.launch", "--backend", "skypilot", *args, env=self.env, cwd=cwd)


def _fixture_env(directory: Path) -> dict[str, str]:
    sshd, api = free_ports(2)
    ports = {"HPC_SKY_SSHD_PORT": str(sshd), "HPC_SKY_API_PORT": str(api)}
    base = {**os.environ, **ports, "HPC_SKY_FIXTURE": str(directory), "HPC_CLOUD_VENV": str(CLOUD_VENV)}
    lines = subprocess.run(["bash", str(FIXTURE), "env"], capture_output=True, text=True, env=base,
                           check=True).stdout
    env = {**ports, "HPC_SKY_FIXTURE": str(directory), "HPC_CLOUD_VENV": str(CLOUD_VENV)}
    for line in lines.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        env[key] = value.replace("$PATH", os.environ["PATH"])
    return env


@pytest.fixture(scope="session")
def sky_fixture(tmp_path_factory) -> Iterator[SkyFixture]:
    cloud_python()
    directory = tmp_path_factory.mktemp("skyfx")
    env = _fixture_env(directory)
    base = {**os.environ, **env}
    up = subprocess.run(["bash", str(FIXTURE), "up"], capture_output=True, text=True, env=base, timeout=600)
    if up.returncode != 0:
        subprocess.run(["bash", str(FIXTURE), "down"], capture_output=True, env=base, timeout=600)
        pytest.fail(f"the SkyPilot fixture did not come up:\n{up.stdout}\n{up.stderr}")
    fixture = SkyFixture(directory, env)
    try:
        yield fixture
    finally:
        subprocess.run(["bash", str(FIXTURE), "down"], capture_output=True, env=base, timeout=600)
    assert fixture.jail_log() == "", f"the network jail refused connections:\n{fixture.jail_log()}"


@pytest.fixture
def sky(sky_fixture) -> Iterator[SkyFixture]:
    """The session's fixture, for one test: which fails if the jail refused anything during it."""
    before = sky_fixture.jail_log()
    yield sky_fixture
    after = sky_fixture.jail_log()
    assert after == before, f"the network jail refused connections:\n{after[len(before):]}"


def slurm_jobs_of(cluster: str) -> list[str]:
    """SLURM jobs SkyPilot still has for `cluster` (its job names start with the cluster's name)."""
    out = subprocess.run(["squeue", "-h", "-o", "%i %j"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line.split()[-1].startswith(cluster)]
