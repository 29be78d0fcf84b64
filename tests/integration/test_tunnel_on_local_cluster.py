"""--tunnel for real: sshd on loopback, a job that can reach the (loopback) hub only through the SSH SOCKS
tunnel and proxychains4. Throwaway keys; nothing leaves 127.0.0.1."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from hpc import ROOT

from helpers import TINY_YAML, log_text, manifest

pytestmark = pytest.mark.slurm


@dataclass
class Sshd:
    port: int
    key: Path
    log: Path


@pytest.fixture
def sshd(tmp_path):
    for tool in ("/usr/sbin/sshd", "proxychains4"):
        if not shutil.which(tool):
            pytest.fail(f"{tool} is missing: scripts/setup.sh installs openssh-server and proxychains4")
    d = tmp_path / "sshd"
    d.mkdir()
    for name in ("host_key", "user_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True)
    (d / "authorized_keys").write_text((d / "user_key.pub").read_text())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
    options = [f"Port={port}", "ListenAddress=127.0.0.1", f"HostKey={d / 'host_key'}",
               f"AuthorizedKeysFile={d / 'authorized_keys'}", "PermitRootLogin=prohibit-password",
               "PasswordAuthentication=no", "KbdInteractiveAuthentication=no", "AllowTcpForwarding=yes",
               "StrictModes=no", "PidFile=none", "LogLevel=DEBUG1", "UsePAM=no"]
    log = d / "sshd.log"
    with log.open("w") as out:
        proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", "/dev/null",
                                 *[arg for o in options for arg in ("-o", o)]], stderr=out)
    deadline = time.monotonic() + 10
    while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    yield Sshd(port=port, key=d / "user_key", log=log)
    proc.terminate()
    proc.wait(timeout=10)


def test_job_reaches_the_hub_only_through_the_tunnel(launch, tmp_path, fake_hub, sshd, user_profiles):
    model_dir = ROOT / "build" / "tiny" / "model"
    fake_hub.add_repo("tiny/qwen2", {p.name: p.read_bytes() for p in model_dir.iterdir() if p.is_file()})
    # internet: true only so that nothing is prefetched: the job itself must fetch the model, via the tunnel.
    user_profiles("tunneled", internet=True, tunnel_host=f"ssh://root@127.0.0.1:{sshd.port}", tunnel_direct=[])
    dotenv = tmp_path / "tunnel.env"
    dotenv.write_text((ROOT / "dotenv" / "local.env").read_text()
                      + f"HF_ENDPOINT={fake_hub.url}\nSSH_KNOWN_HOSTS={tmp_path / 'known_hosts'}\n")
    secrets = tmp_path / "secrets.env"
    secrets.write_text(f"SSH_KEY={sshd.key}\n")
    secrets.chmod(0o600)
    config = yaml.safe_load(TINY_YAML.read_text())
    config.update(model_name_or_path="tiny/qwen2", dataset_dir=str(ROOT / "build/tiny/data"), max_steps=2,
                  save_steps=2)
    config_path = tmp_path / "tunnel_sft.yaml"
    config_path.write_text(yaml.safe_dump(config))
    result = launch("--cluster", "tunneled", "--dotenv", str(dotenv), "--train_config_path", str(config_path),
                    "--job_name", "tun", "--gpus_per_node", "1", "--tunnel", "--wait",
                    extra_env={"HPC_LAUNCH_PROFILES": str(tmp_path / "my_profiles"),
                               "DC_AGENT_SECRET_ENV": str(secrets)})
    exp = tmp_path / "exp" / "tun"
    logs = log_text(exp)
    assert result.returncode == 0, result.stdout + logs + sshd.log.read_text()[-3000:]
    assert manifest(exp)["jobs"][0]["state"] == "COMPLETED"
    assert "tunnel to ssh://root@127.0.0.1" in logs and "running offline" not in logs
    hub_port = fake_hub.url.rsplit(":", 1)[1]
    assert f"target 127.0.0.1 port {hub_port}" in sshd.log.read_text()  # the hub was reached through sshd
    assert any("/tiny/qwen2/resolve/" in r["path"] for r in fake_hub.requests)
    script = (exp / "sbatch" / "train.sbatch").read_text()
    assert "proxychains4 -q torchrun" in script and str(sshd.key) not in script
    private = sshd.key.read_text().splitlines()[1]
    everything = result.stdout + result.stderr + "".join(
        p.read_text(errors="replace") for p in exp.rglob("*") if p.is_file())
    assert private not in everything and json.loads((exp / "manifest.json").read_text())
