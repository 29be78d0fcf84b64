"""Rendered train scripts for a few clusters, compared with tests/golden/ (UPDATE_GOLDEN=1 rewrites them)."""

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from hpc.context import LaunchOptions
from hpc.jobs.train import build_plan

from helpers import TRAIN_YAML

GOLDEN = Path(__file__).parent / "golden"
LOGIN_ENV = {"HOME": "/home/alice", "USER": "alice", "PATH": "/usr/bin:/bin", "SCRATCH": "/scratch/alice",
             "PROJECT": "/project/alice", "WORK": "/tacc/alice", "PSCRATCH": "/pscratch/alice"}


@pytest.mark.parametrize("cluster, tunnel", [("local", False), ("jureca", False), ("perlmutter", False),
                                             ("vista", False), ("jureca", True)])
def test_train_script_matches_golden(cluster, tunnel, tmp_path, monkeypatch):
    update = bool(os.environ.get("UPDATE_GOLDEN"))
    for key in list(os.environ):
        monkeypatch.delenv(key)
    for key, value in LOGIN_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("socket.gethostname", lambda: "jrlogin05.jureca")
    secrets = tmp_path / "secrets.env"
    secrets.write_text("HF_TOKEN=hf_never_in_a_script\n")
    secrets.chmod(0o600)
    (tmp_path / "sft.yaml").write_text(yaml.safe_dump(TRAIN_YAML))
    plan = build_plan(LaunchOptions(cluster=cluster, train_config_path="sft.yaml", job_name="golden",
                                    experiments_dir=str(tmp_path / "exp"), secrets_env=str(secrets), num_nodes=2,
                                    tunnel=tunnel))
    assert subprocess.run(["bash", "-n"], input=plan.jobs[0].script, text=True).returncode == 0
    script = plan.jobs[0].script.replace(str(tmp_path), "<TMP>")
    assert "hf_never_in_a_script" not in script
    golden = GOLDEN / f"train_{cluster}{'_tunnel' if tunnel else ''}.sbatch"
    if update:
        golden.write_text(script)
    assert script == golden.read_text()
