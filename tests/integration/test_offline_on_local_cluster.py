"""An offline cluster (the local profile has internet: false): prefetch from a loopback hub, run offline,
upload later with hpc.sync. Nothing here contacts a real hub: HF_ENDPOINT is the fake one."""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from hpc import ROOT

from helpers import TINY_YAML, log_text, manifest, run_cli

pytestmark = pytest.mark.slurm


@pytest.fixture
def hub_job(tmp_path, fake_hub, tiny_model):
    """A train YAML naming a model and a dataset that exist only on the fake hub."""
    model_dir = ROOT / "build" / "tiny" / "model"
    fake_hub.add_repo("tiny/qwen2", {p.name: p.read_bytes() for p in model_dir.iterdir() if p.is_file()})
    train_rows = (ROOT / "build" / "tiny" / "data" / "tiny_train.json").read_bytes()
    fake_hub.add_repo("tiny/arith", {"data/train.json": train_rows, "README.md": b"# arith\n"}, repo_type="dataset")
    data = tmp_path / "data"
    data.mkdir()
    (data / "dataset_info.json").write_text(json.dumps({"arith": {"hf_hub_url": "tiny/arith"}}))
    config = yaml.safe_load(TINY_YAML.read_text())
    config.update(model_name_or_path="tiny/qwen2", dataset="arith", dataset_dir=str(data), push_to_hub=True,
                  hub_model_id="org/tiny-sft", max_steps=2, save_steps=2)
    path = tmp_path / "hub_sft.yaml"
    path.write_text(yaml.safe_dump(config))
    secrets = tmp_path / "secrets.env"
    secrets.write_text("HF_TOKEN=hf_sync_token\n")
    secrets.chmod(0o600)
    return path, {**fake_hub.env(), "DC_AGENT_SECRET_ENV": str(secrets)}


def _resolves(hub) -> int:
    return sum(1 for r in hub.requests if r["method"] == "GET" and "/resolve/" in r["path"])


def test_offline_launch_prefetches_once_runs_offline_and_syncs_later(launch, tmp_path, fake_hub, hub_job):
    config_path, env = hub_job
    first = launch("--train_config_path", str(config_path), "--job_name", "off1", "--gpus_per_node", "1", "--wait",
                   extra_env=env)
    exp = tmp_path / "exp" / "off1"
    assert first.returncode == 0, first.stdout + first.stderr + log_text(exp)
    assert "prefetch: model tiny/qwen2 (model_name_or_path)" in first.stdout
    assert "prefetch: dataset tiny/arith (dataset arith)" in first.stdout
    assert f"python -m hpc.sync {exp}" in first.stdout  # the deferred upload is announced
    downloads = _resolves(fake_hub)
    assert downloads >= 3  # model files and the dataset file
    resolved = yaml.safe_load((exp / "configs" / "train.yaml").read_text())
    cache = tmp_path / "scratch" / "hf_home" / "hub"
    assert resolved["model_name_or_path"].startswith(str(cache / "models--tiny--qwen2" / "snapshots"))
    assert resolved["dataset_dir"] == str(exp / "configs") and resolved["push_to_hub"] is False
    link = exp / "datasets" / "arith" / "0000_train.json"
    assert link.is_symlink() and str(link.resolve()).startswith(str(cache / "datasets--tiny--arith"))
    script = (exp / "sbatch" / "train.sbatch").read_text()
    assert "export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=offline" in script
    assert "running offline" in log_text(exp) and manifest(exp)["jobs"][0]["state"] == "COMPLETED"
    summary = json.loads((exp / "run_summary.json").read_text())
    assert summary["datasets"] == ["tiny/arith"] and summary["base_model"] == "tiny/qwen2"  # Hub ids, not paths

    second = launch("--train_config_path", str(config_path), "--job_name", "off2", "--gpus_per_node", "1",
                    extra_env=env)
    assert second.returncode == 0, second.stderr
    subprocess.run(["scancel", manifest(tmp_path / "exp" / "off2")["jobs"][0]["job_id"]], check=False)
    assert _resolves(fake_hub) == downloads  # cached revisions are not downloaded again

    assert "org/tiny-sft" not in {r["path"].split("/api/models/")[-1] for r in fake_hub.requests}
    sync = run_cli(str(exp), module="hpc.sync", env=env)
    assert sync.returncode == 0, sync.stdout + sync.stderr
    uploaded = fake_hub.repo_files("org/tiny-sft")
    assert "model.safetensors" in uploaded and "config.json" in uploaded
    assert not any(name.startswith("checkpoint-") for name in uploaded)
    assert fake_hub.is_private("org/tiny-sft")
    again = run_cli(str(exp), module="hpc.sync", env=env)
    assert "already done" in again.stdout and len(fake_hub.commits("org/tiny-sft")) == 2  # create + one upload
    assert "hf_sync_token" not in first.stdout + sync.stdout + sync.stderr


def test_a_missing_repo_stops_the_launch_before_anything_is_written(launch, tmp_path, fake_hub, hub_job):
    config_path, env = hub_job
    config = yaml.safe_load(config_path.read_text())
    config["model_name_or_path"] = "tiny/does-not-exist"
    config_path.write_text(yaml.safe_dump(config))
    result = launch("--train_config_path", str(config_path), "--job_name", "missing", extra_env=env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "hpc-launch: error: prefetch: model tiny/does-not-exist not found on the Hub (or no access with your "
        "HF_TOKEN); fix the name in the train config"]
    assert not (tmp_path / "exp").exists()
    queued = subprocess.run(["squeue", "-h", "-n", "missing"], capture_output=True, text=True).stdout
    assert queued.strip() == ""
