"""What an upstream user pastes, run for real: an upstream-style SFT YAML (global_batch_size in the YAML, no
dataset) with `--dataset org/name` of a ShareGPT dataset on the (loopback) Hub, on the offline local cluster."""

from __future__ import annotations

import json

import pytest
import yaml

from hpc import ROOT

from helpers import log_text, manifest

pytestmark = [pytest.mark.slurm, pytest.mark.ml]

UPSTREAM_YAML = """\
### model
model_name_or_path: build/tiny/model
### method
stage: sft
do_train: true
finetuning_type: full
### dataset
template: qwen
cutoff_len: 128
max_samples: 32
overwrite_cache: true
preprocessing_num_workers: 1
### output
logging_steps: 1
plot_loss: false
### train
global_batch_size: 4
per_device_train_batch_size: 1
learning_rate: 1.0e-3
max_steps: 2
lr_scheduler_type: cosine
bf16: false
report_to: none
"""


def test_upstream_yaml_with_global_batch_size_and_a_hub_sharegpt_dataset_trains(launch, tmp_path, fake_hub):
    rows = json.loads((ROOT / "build" / "tiny" / "data" / "tiny_train.json").read_text())
    sharegpt = [{"conversations": [{"from": "human", "value": r["instruction"]}, {"from": "gpt", "value": r["output"]}]}
                for r in rows]
    fake_hub.add_repo("org/arith-sharegpt", {"train.json": json.dumps(sharegpt).encode()}, repo_type="dataset")
    config = tmp_path / "upstream.yaml"
    config.write_text(UPSTREAM_YAML)
    result = launch("--job_type", "sft", "--train_config_path", str(config), "--dataset", "org/arith-sharegpt",
                    "--job_name", "up", "--gpus_per_node", "2", "--wait", extra_env=fake_hub.env())
    exp = tmp_path / "exp" / "up"
    assert result.returncode == 0, result.stdout + result.stderr + log_text(exp)
    assert manifest(exp)["jobs"][0]["state"] == "COMPLETED"
    resolved = yaml.safe_load((exp / "configs" / "train.yaml").read_text())
    assert "global_batch_size" not in resolved and resolved["gradient_accumulation_steps"] == 2  # 4 / (1 x 2)
    assert "formatting" not in resolved and resolved["dataset_dir"] == str(exp / "configs")
    entry = json.loads((exp / "configs" / "dataset_info.json").read_text())["org/arith-sharegpt"]
    assert entry["formatting"] == "sharegpt" and entry["columns"] == {"messages": "conversations"}
    assert entry["tags"]["role_tag"] == "from" and entry["hub_source"] == "org/arith-sharegpt"
    assert "'train_loss'" in log_text(exp) or "train_loss" in log_text(exp)
