"""hpc/jobside/run_summary.py: the run summary the train job writes and the registry reads."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hpc import ROOT
from hpc.jobside import run_summary
from hpc.jobside.run_summary import build_summary

SCRIPT = ROOT / "hpc" / "jobside" / "run_summary.py"
WANDB_ENV = {"WANDB_ENTITY": "my-team", "WANDB_PROJECT": "hpc-launch", "WANDB_RUN_ID": "tiny_sft_20261123-101500",
             "SLURM_JOB_ID": "4242", "SLURM_CLUSTER_NAME": "local", "USER": "alice"}


def config(tmp_path: Path, **changes) -> dict:
    data_dir = tmp_path / "data"
    data_dir.mkdir(exist_ok=True)
    (data_dir / "dataset_info.json").write_text(json.dumps({
        "tiny_sft": {"file_name": "tiny_sft.json"},
        "hub_sft": {"hf_hub_url": "org/hub-sft", "split": "train"},
    }))
    base = {"model_name_or_path": "Qwen/Qwen3-0.6B", "stage": "sft", "do_train": True, "dataset": "tiny_sft, hub_sft",
            "dataset_dir": str(data_dir), "output_dir": str(tmp_path / "ckpt" / "tiny_sft_20261123-101500"),
            "hub_model_id": "org/tiny-sft", "report_to": "wandb", "learning_rate": 0.001}
    return base | changes


def test_summary_of_a_resolved_config(tmp_path):
    cfg = config(tmp_path)
    path = tmp_path / "train.yaml"
    summary = build_summary(cfg, path, "2026-11-23T10:15:00+01:00", "2026-11-23T12:00:00+00:00", None, WANDB_ENV)
    assert summary == {
        "schema": "hpc-launch.run_summary/1",
        "model_name": "org/tiny-sft",
        "hub_model_id": "org/tiny-sft",
        "base_model": "Qwen/Qwen3-0.6B",
        "datasets": ["tiny_sft", "org/hub-sft"],
        "training_type": "SFT",
        "stage": "sft",
        "training_start": "2026-11-23T10:15:00+01:00",
        "training_end": "2026-11-23T12:00:00+00:00",
        "weights_location": cfg["output_dir"],
        "wandb": {"entity": "my-team", "project": "hpc-launch", "run_id": "tiny_sft_20261123-101500",
                  "run_path": "my-team/hpc-launch/tiny_sft_20261123-101500",
                  "url": "https://wandb.ai/my-team/hpc-launch/runs/tiny_sft_20261123-101500", "mode": None},
        "slurm_job_id": "4242",
        "cluster": "local",
        "created_by": "alice",
        "training_parameters_path": str(path),
        "training_parameters": cfg,
    }


@pytest.mark.parametrize("stage, kind", [("sft", "SFT"), ("SFT", "SFT"), ("ppo", "RL"), ("dpo", None), ("pt", None),
                                         ("rm", None), (None, None)])
def test_training_type_from_stage(tmp_path, stage, kind):
    summary = build_summary(config(tmp_path, stage=stage), tmp_path / "c.yaml", "2026-11-23T10:00:00Z",
                            "2026-11-23T11:00:00Z", None, {})
    assert summary["training_type"] == kind


def test_hub_id_recovered_from_a_cache_snapshot_and_model_name_without_hub_id(tmp_path):
    snapshot = "/scratch/hf/hub/models--Qwen--Qwen3-0.6B/snapshots/0123abcd"
    cfg = config(tmp_path, model_name_or_path=snapshot, hub_model_id=None, output_dir="ckpt/run7")
    summary = build_summary(cfg, tmp_path / "c.yaml", "2026-11-23T10:00:00Z", "2026-11-23T11:00:00Z", "77", {})
    assert summary["base_model"] == "Qwen/Qwen3-0.6B"
    assert summary["model_name"] == "run7" and summary["hub_model_id"] is None
    assert summary["weights_location"] == str(Path.cwd() / "ckpt" / "run7")
    assert summary["slurm_job_id"] == "77" and summary["training_end"] == "2026-11-23T11:00:00+00:00"
    assert run_summary.hub_id("build/tiny/model") == "build/tiny/model"


@pytest.mark.parametrize("report_to, env, expected", [
    ("none", WANDB_ENV, None),
    ("tensorboard", WANDB_ENV, None),
    (["tensorboard", "wandb"], WANDB_ENV, "my-team/hpc-launch/tiny_sft_20261123-101500"),
    ("all", WANDB_ENV, "my-team/hpc-launch/tiny_sft_20261123-101500"),
])
def test_wandb_only_when_reported(tmp_path, report_to, env, expected):
    summary = build_summary(config(tmp_path, report_to=report_to), tmp_path / "c.yaml", "2026-11-23T10:00:00Z",
                            "2026-11-23T11:00:00Z", None, env)
    assert (summary["wandb"] or {}).get("run_path") == expected


def test_wandb_without_entity_or_off_cloud_has_no_path_or_url():
    no_entity = run_summary.wandb_info({"report_to": "wandb"}, {"WANDB_RUN_ID": "r1", "WANDB_MODE": "offline"})
    assert no_entity == {"entity": None, "project": "huggingface", "run_id": "r1", "run_path": None, "url": None,
                         "mode": "offline"}
    hosted = run_summary.wandb_info({"report_to": "wandb"}, {**WANDB_ENV, "WANDB_BASE_URL": "https://wandb.corp.example"})
    assert hosted["run_path"] == "my-team/hpc-launch/tiny_sft_20261123-101500" and hosted["url"] is None


def _run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=cwd)


def test_cli_writes_the_summary(tmp_path):
    cfg = tmp_path / "train.yaml"
    cfg.write_text(yaml.safe_dump(config(tmp_path)))
    out = tmp_path / "exp" / "run_summary.json"
    proc = _run("--config", str(cfg), "--output", str(out), "--started", "2026-11-23T10:00:00+00:00",
                "--finished", "2026-11-23T11:00:00+00:00", "--job-id", "12")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    assert data["slurm_job_id"] == "12" and data["training_parameters"]["learning_rate"] == 0.001
    assert [p.name for p in out.parent.iterdir()] == ["run_summary.json"]  # no temp file left behind


@pytest.mark.parametrize("change, args, message", [
    ({}, ("--started", "yesterday"), "--started 'yesterday' is not an ISO 8601 date-time"),
    ({"model_name_or_path": None}, (), "has no model_name_or_path"),
    ({"output_dir": None}, (), "has no output_dir"),
    (None, (), "is not a YAML mapping"),
])
def test_cli_refuses_bad_input_in_one_line_and_writes_nothing(tmp_path, change, args, message):
    cfg = tmp_path / "train.yaml"
    cfg.write_text(yaml.safe_dump(config(tmp_path, **change) if change is not None else ["a", "list"]))
    out = tmp_path / "run_summary.json"
    base = {"--started": "2026-11-23T10:00:00Z", "--finished": "2026-11-23T11:00:00Z"}
    base.update(dict(zip(args[::2], args[1::2])))
    proc = _run("--config", str(cfg), "--output", str(out), *[x for kv in base.items() for x in kv])
    assert proc.returncode == 2 and not out.exists()
    assert len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr, proc.stderr


def test_script_is_self_contained(tmp_path):
    """Only the stdlib and PyYAML: it runs from a copy, outside the repository, in isolated mode."""
    imported = set()
    for node in ast.walk(ast.parse(SCRIPT.read_text())):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported - sys.stdlib_module_names == {"yaml"}
    copy = tmp_path / "run_summary.py"
    shutil.copy(SCRIPT, copy)
    cfg = tmp_path / "train.yaml"
    cfg.write_text(yaml.safe_dump(config(tmp_path)))
    proc = subprocess.run([sys.executable, "-I", str(copy), "--config", str(cfg), "--output", str(tmp_path / "s.json"),
                           "--started", "2026-11-23T10:00:00Z", "--finished", "2026-11-23T11:00:00Z"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
