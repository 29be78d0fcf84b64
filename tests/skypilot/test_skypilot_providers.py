"""`hpc-launch providers` and `hpc-launch ssh-pool`: set-up steps without SkyPilot; the infra list, the credential
check and the SSH node pool file with SkyPilot's own registry, check and loader, under the network jail."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import yaml

from hpc import ROOT
from helpers import run_cli

from conftest import run_cloud

LOAD = ("import sys\nfrom sky.ssh_node_pools import utils\n"
        "pools = utils.load_ssh_targets(sys.argv[1])\n"
        "for name in sys.argv[2:]:\n"
        "    hosts = utils.prepare_hosts_info(name, utils.get_cluster_config(pools, name, sys.argv[1])[name])\n"
        "    print(name, [(h['ip'], h['user'], h['identity_file']) for h in hosts])\n")


def one_line_error(result, exit_code: int, words: str) -> None:
    assert result.returncode == exit_code, (result.stdout, result.stderr)
    assert len(result.stderr.strip().splitlines()) == 1 and words in result.stderr, result.stderr


# Without SkyPilot (the main venv): steps are data; whatever needs SkyPilot says how to get it.

def test_setup_steps_need_no_skypilot():
    result = run_cli("providers", "lambda")
    assert result.returncode == 0, result.stderr
    assert "~/.lambda_cloud/lambda_keys" in result.stdout and "hpc-launch providers lambda --check" in result.stdout
    ssh = run_cli("providers", "ssh")
    assert "hpc-launch ssh-pool POOL" in ssh.stdout and "sky ssh up --infra POOL" in ssh.stdout


@pytest.mark.parametrize("args,needed_by", [
    (("providers",), "hpc-launch providers"),
    (("providers", "aws", "--check"), "hpc-launch providers"),
    (("ssh-pool", "p", "--host", "10.0.0.5", "--user", "u", "--identity_file", __file__), "hpc-launch ssh-pool"),
])
def test_without_skypilot_one_line_names_the_extra(args, needed_by):
    one_line_error(run_cli(*args), 2, f"{needed_by} needs SkyPilot: pip install 'hpc-launch[cloud]'")


def test_check_needs_a_name():
    one_line_error(run_cli("providers", "--check"), 2, "--check needs NAME")


# With SkyPilot, under the jail.

@pytest.fixture
def home(sky, tmp_path) -> dict[str, str]:
    """The jailed environment with a HOME of the test's own (SkyPilot's node pool file is ~/.sky/...)."""
    (tmp_path / "home").mkdir()
    return {**sky.env, "HOME": str(tmp_path / "home")}


@pytest.fixture
def key(tmp_path) -> Path:
    path = tmp_path / "id_pool"
    path.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nnot a real key\n-----END OPENSSH PRIVATE KEY-----\n")
    path.chmod(0o600)
    return path


def ssh_pool(env: dict[str, str], *args: str):
    return run_cloud("-m", "hpc.launch", "ssh-pool", *args, env=env)


@pytest.mark.skypilot
@pytest.mark.slurm
def test_the_list_is_skypilots_registry_and_every_documented_infra_is_in_it(home):
    result = run_cloud("-m", "hpc.launch", "providers", env=home)
    assert result.returncode == 0, result.stderr
    listed = {line.split()[0] for line in result.stdout.splitlines() if line.startswith("  ")}
    documented = set(yaml.safe_load((ROOT / "hpc/backends/skypilot/providers.yaml").read_text())["providers"])
    code = "from sky.utils import registry\nprint(' '.join(registry.CLOUD_REGISTRY))\n"
    registry = set(run_cloud("-c", code, env=home).stdout.split())
    assert listed == registry and documented <= registry, (documented - registry, listed ^ registry)
    assert {"aws", "gcp", "lambda", "kubernetes", "ssh", "slurm"} <= listed
    alias = run_cloud("-m", "hpc.launch", "providers", "k8s", env=home)
    assert alias.returncode == 0 and alias.stdout.startswith("kubernetes: "), alias.stdout + alias.stderr
    one_line_error(run_cloud("-m", "hpc.launch", "providers", "nocloud", env=home), 2, "not an infra SkyPilot knows")


@pytest.mark.skypilot
@pytest.mark.slurm
def test_check_slurm_is_enabled_on_the_local_cluster(sky):
    result = run_cloud("-m", "hpc.launch", "providers", "slurm", "--check", env=sky.env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Slurm: enabled" in result.stdout and "localslurm" in result.stdout, result.stdout
    assert result.stdout.strip().splitlines()[-1] == ("hpc-launch: slurm is enabled: --backend skypilot "
                                                      "--cloud-provider slurm")


@pytest.mark.skypilot
@pytest.mark.slurm
def test_check_of_a_cloud_without_credentials_exits_1_with_skypilots_reason(sky):
    def check() -> list[str]:
        result = run_cloud("-m", "hpc.launch", "providers", "lambda", "--check", env=sky.env)
        assert result.returncode == 1, result.stdout + result.stderr
        lines = result.stdout.strip().splitlines()
        assert lines[0].strip() == "Lambda: disabled" and lines[1].strip().startswith("Reason"), result.stdout
        assert lines[-1] == "hpc-launch: lambda is not enabled; set it up: hpc-launch providers lambda"
        return lines

    assert "not included in allowed_clouds" in check()[1]  # the fixture allows Slurm only
    config = Path(sky.env["HOME"]) / ".sky" / "config.yaml"
    before = config.read_text()
    try:  # allowed: SkyPilot looks for credentials (none in the fixture's HOME: no request leaves the machine)
        config.write_text(before.replace("allowed_clouds: [slurm]", "allowed_clouds: [slurm, lambda]"))
        assert "to ~/.lambda_cloud/lambda_keys" in "\n".join(check())
    finally:
        config.write_text(before)


@pytest.mark.skypilot
@pytest.mark.slurm
def test_pools_merge_into_skypilots_file_which_its_loader_reads(home, key):
    pools = Path(home["HOME"]) / ".sky" / "ssh_node_pools.yaml"
    first = ssh_pool(home, "gpus", "--host", "10.0.0.5", "--host", "admin@gpu2.example.com", "--user", "ubuntu",
                     "--identity_file", str(key))
    assert first.returncode == 0, first.stderr
    assert "  sky ssh up --infra gpus  " in first.stdout  # the default file: no -f
    assert "--cloud-provider ssh/gpus" in first.stdout
    assert yaml.safe_load(pools.read_text()) == {"gpus": {
        "hosts": ["10.0.0.5", {"ip": "gpu2.example.com", "user": "admin"}], "user": "ubuntu",
        "identity_file": str(key)}}
    assert stat.S_IMODE(pools.stat().st_mode) == 0o644

    second = ssh_pool({**home, "POOL_SUDO": "s3cret"}, "cpus", "--host", "fe80::1", "--user", "root",
                      "--identity_file", str(key), "--password_env", "POOL_SUDO")
    assert second.returncode == 0, second.stderr
    assert "s3cret" not in second.stdout + second.stderr
    both = yaml.safe_load(pools.read_text())
    assert list(both) == ["gpus", "cpus"] and both["cpus"]["password"] == "s3cret"
    assert stat.S_IMODE(pools.stat().st_mode) == 0o600  # it holds a password now

    loaded = run_cloud("-c", LOAD, str(pools), "gpus", "cpus", env=home)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.splitlines() == [
        f"gpus [('10.0.0.5', 'ubuntu', '{key}'), ('gpu2.example.com', 'admin', '{key}')]",
        f"cpus [('fe80::1', 'root', '{key}')]"]

    before = pools.read_bytes()
    again = ssh_pool(home, "gpus", "--host", "10.0.0.9", "--user", "ubuntu", "--identity_file", str(key))
    one_line_error(again, 2, "already has a pool gpus; pass --replace")
    assert pools.read_bytes() == before
    replaced = ssh_pool(home, "gpus", "--host", "10.0.0.9", "--user", "ubuntu", "--identity_file", str(key),
                        "--replace")
    assert replaced.returncode == 0 and "replaced SSH node pool gpus (1 host)" in replaced.stdout, replaced.stderr
    after = yaml.safe_load(pools.read_text())
    assert after["gpus"]["hosts"] == ["10.0.0.9"] and after["cpus"] == both["cpus"]
    assert sorted(p.name for p in pools.parent.iterdir() if p.name.startswith(".ssh_node_pools")) == []


@pytest.mark.skypilot
@pytest.mark.slurm
@pytest.mark.parametrize("args,words", [
    (("--host=-oProxyCommand=touch /tmp/x",), "is not a hostname or IP address"),
    (("--host", "gpu 1"), "is not a hostname or IP address"),
    (("--host", "a@b@c"), "is not a user name"),
    (("--host", "h1", "--host", "h1"), "is given twice"),
    (("--host", "h1", "--identity_file", "/nonexistent/id"), "no such file"),
    (("--host", "h1", "--password_env", "HPC_TEST_UNSET_PASSWORD"), "environment variable is not set"),
    (("--host", "h1", "--bogus", "1"), "--bogus is not an option of hpc-launch ssh-pool"),
])
def test_bad_input_exits_2_with_one_line_and_leaves_the_file_unchanged(home, key, args, words):
    pools = Path(home["HOME"]) / ".sky" / "ssh_node_pools.yaml"
    pools.parent.mkdir()
    pools.write_text("# mine\nother:\n  hosts: [10.1.1.1]\n  user: me\n  identity_file: ~/.ssh/id\n")
    before = pools.read_bytes()
    base = ["--user", "ubuntu"] + ([] if "--identity_file" in args else ["--identity_file", str(key)])
    one_line_error(ssh_pool(home, "gpus", *args, *base), 2, words)
    assert pools.read_bytes() == before


@pytest.mark.skypilot
@pytest.mark.slurm
def test_a_file_skypilot_cannot_read_is_left_alone(home, key):
    pools = Path(home["HOME"]) / ".sky" / "ssh_node_pools.yaml"
    pools.parent.mkdir()
    pools.write_text("a:\n  hosts: [h]\na:\n  hosts: [h]\n")  # SkyPilot's loader refuses duplicate keys
    before = pools.read_bytes()
    result = ssh_pool(home, "gpus", "--host", "h1", "--user", "u", "--identity_file", str(key))
    one_line_error(result, 2, "SkyPilot cannot read it")
    assert "Duplicate key" in result.stderr and pools.read_bytes() == before


@pytest.mark.skypilot
@pytest.mark.slurm
def test_a_task_on_the_pool_validates_offline(home, key, tmp_path):
    assert ssh_pool(home, "gpus", "--host", "10.0.0.5", "--user", "ubuntu", "--identity_file",
                    str(key)).returncode == 0
    exp = tmp_path / "exp"
    result = run_cloud("-m", "hpc.launch", "--backend", "skypilot", "--job_type", "run", "--command", "true",
                       "--cloud-provider", "ssh/gpus", "--dry_run", "--experiments_dir", str(exp), "--job_name", "p",
                       env=home)
    assert result.returncode == 0, result.stderr
    assert "SkyPilot accepts the run task (checked offline)" in result.stdout
    task = yaml.safe_load((exp / "p" / "sky" / "run.yaml").read_text())
    assert task["resources"]["infra"] == "ssh/gpus"
    assert task["resources"]["autostop"]["down"] is True  # a pool's cluster cannot stop, only go down
