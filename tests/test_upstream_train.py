"""Upstream train configs and flags: global_batch_size in the YAML, Hub datasets with ShareGPT defaults,
--train_extra_args, LLaMA-Factory's own key check, and upstream-only flags refused with their replacement."""

from __future__ import annotations

import importlib.util
import json

import pytest
import yaml

from hpc.errors import LaunchError
from hpc.jobs.train import build_plan
from hpc.lf_data import parse_extra_args
from hpc.options import LaunchOptions

from helpers import TRAIN_YAML, run_cli

HAS_LF = importlib.util.find_spec("llamafactory") is not None


def _plan(tmp_path, yaml_data: dict, **kw):
    path = tmp_path / "up.yaml"
    path.write_text(yaml.safe_dump(yaml_data))
    opts = LaunchOptions(**{"cluster": "vista", "train_config_path": str(path), "experiments_dir": str(tmp_path / "e"),
                            "job_name": "u", **kw})
    plan = build_plan(opts)
    return plan, yaml.safe_load(plan.files["configs/train.yaml"])


def test_global_batch_size_in_the_yaml_sets_accumulation_and_never_reaches_llamafactory(tmp_path):
    data = {**TRAIN_YAML, "global_batch_size": 32, "per_device_train_batch_size": 2}
    _, config = _plan(tmp_path, data, num_nodes=4)  # vista: 1 GPU per node -> 4 processes
    assert "global_batch_size" not in config and config["gradient_accumulation_steps"] == 4
    _, config = _plan(tmp_path, data, num_nodes=4, global_batch_size=16)  # the flag wins over the YAML
    assert config["gradient_accumulation_steps"] == 2
    with pytest.raises(LaunchError, match="not a multiple"):
        _plan(tmp_path, {**data, "global_batch_size": 6}, num_nodes=4)
    with pytest.raises(LaunchError, match="global_batch_size must be a whole number"):
        _plan(tmp_path, {**data, "global_batch_size": "many"})


def test_hub_dataset_gets_upstreams_sharegpt_defaults(tmp_path):
    data = {k: v for k, v in TRAIN_YAML.items() if k not in ("dataset", "dataset_dir")}
    plan, config = _plan(tmp_path, data, dataset="org/traces,org/more")
    info = json.loads(plan.files["configs/dataset_info.json"])
    assert config["dataset_dir"] == str(plan.experiment_dir / "configs") and config["dataset"] == "org/traces,org/more"
    assert info["org/traces"] == {"hf_hub_url": "org/traces", "formatting": "sharegpt",
                                  "columns": {"messages": "conversations"},
                                  "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human",
                                           "assistant_tag": "gpt"}}
    assert set(info) == {"org/traces", "org/more"}


def test_format_keys_from_the_yaml_or_flags_go_into_the_entries(tmp_path):
    data = {**{k: v for k, v in TRAIN_YAML.items() if k != "dataset"}, "dataset_dir": "ONLINE",
            "messages": "messages", "role_tag": "role", "content_tag": "content"}
    plan, config = _plan(tmp_path, data, dataset="org/chat", user_tag="user", assistant_tag="assistant")
    entry = json.loads(plan.files["configs/dataset_info.json"])["org/chat"]
    assert entry["columns"] == {"messages": "messages"}
    assert entry["tags"] == {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                             "assistant_tag": "assistant"}
    assert not {"messages", "role_tag", "user_tag", "formatting"} & set(config)
    plan, _ = _plan(tmp_path, data, dataset="org/alpaca", formatting="alpaca", prompt_column="q",
                    response_column="a")
    entry = json.loads(plan.files["configs/dataset_info.json"])["org/alpaca"]
    assert entry["formatting"] == "alpaca" and entry["columns"]["prompt"] == "q" and entry["columns"]["response"] == "a"


def test_local_datasets_stay_as_they_are(tmp_path):
    plan, config = _plan(tmp_path, TRAIN_YAML)
    assert config["dataset_dir"] == "build/tiny/data" and "configs/dataset_info.json" not in plan.files


def test_unknown_local_dataset_that_is_no_hub_id_is_refused(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "dataset_info.json").write_text(json.dumps({"mine": {"file_name": "m.json"}}))
    with pytest.raises(LaunchError, match="dataset 'typo' is not in .*dataset_info.json and is not a Hub id"):
        _plan(tmp_path, {**TRAIN_YAML, "dataset": "typo", "dataset_dir": str(data_dir)})


def test_train_extra_args_are_explicit_llamafactory_keys(tmp_path):
    assert parse_extra_args("--lr_scheduler_type cosine --bf16 warmup_ratio=0.1 --save-total-limit=2") == {
        "lr_scheduler_type": "cosine", "bf16": True, "warmup_ratio": 0.1, "save_total_limit": 2}
    with pytest.raises(LaunchError, match="--train_extra_args"):
        parse_extra_args("--system 'unbalanced")
    _, config = _plan(tmp_path, {**TRAIN_YAML, "learning_rate": 0.1}, train_extra_args="--learning_rate 0.5")
    assert config["learning_rate"] == 0.5


@pytest.mark.skipif(not HAS_LF, reason="LLaMA-Factory is not installed here (the check then only notes it)")
def test_typo_key_is_refused_at_launch_with_a_suggestion(tmp_path):
    with pytest.raises(LaunchError, match="unknown key 'learning_rte'.*did you mean 'learning_rate'"):
        _plan(tmp_path, {**TRAIN_YAML, "learning_rte": 1e-4})
    with pytest.raises(LaunchError, match="unknown key 'learnig_rate'"):
        _plan(tmp_path, TRAIN_YAML, train_extra_args="learnig_rate=0.1")


def test_without_llamafactory_the_launch_says_the_config_was_not_checked(tmp_path, monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)
    plan, _ = _plan(tmp_path, {**TRAIN_YAML, "learning_rte": 1e-4})
    assert any("not checked" in note for note in plan.notes)


@pytest.mark.parametrize("args, replacement", [
    (["--num_gpus", "4"], "--num_gpus is upstream's; use --gpus_per_node"),
    (["--name", "jureca"], "--name is upstream's; use --cluster"),
    (["--internet-node"], "--internet_node is upstream's; profiles say whether compute nodes have internet"),
    (["--job_type", "sft_mca"], "--job_type sft_mca is upstream's; the MCA trainer is not supported"),
    (["--job_type=rl"], "--job_type rl is upstream's"),
    (["--attn", "fa2"], "--flash_attn"),
])
def test_upstream_only_flags_are_refused_in_one_line(args, replacement, tmp_path):
    result = run_cli(*args, "--train_config_path", "x.yaml", "--experiments_dir", str(tmp_path / "e"))
    assert result.returncode == 2 and result.stderr.strip() == f"hpc-launch: error: {result.stderr.strip()[19:]}"
    assert replacement in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "e").exists()


def test_upstream_job_type_sft_and_dir_flags(tmp_path, train_yaml):
    result = run_cli("--job_type", "sft", "--cluster", "local", "--train_config_path", str(train_yaml), "--dry_run",
                     "--experiments_dir", str(tmp_path / "e"), "--job_name", "s", "--checkpoints_dir", str(tmp_path / "ck"),
                     "--job_creator", "alice-lab", "--bf16", "false")
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load((tmp_path / "e" / "s" / "configs" / "train.yaml").read_text())
    assert config["output_dir"] == str(tmp_path / "ck" / "s") and config["bf16"] is False
    script = (tmp_path / "e" / "s" / "sbatch" / "train.sbatch").read_text()
    assert "export HPC_JOB_CREATOR=alice-lab" in script and f"export CHECKPOINTS_DIR={tmp_path / 'ck'}" in script


def test_upstream_boolean_values_for_our_switches():
    from hpc.upstream import translate

    argv = ["--enable_task_gen", "false", "--trace-export-subagents=yes", "--datagen_extra_args", "", "--dry_run"]
    assert translate(argv, set(), {"enable_task_gen", "trace_export_subagents"}) == [
        "--no-enable_task_gen", "--trace_export_subagents", "--datagen_extra_args", "", "--dry_run"]


def test_cpus_per_node_is_supported_within_the_node(tmp_path):
    plan, _ = _plan(tmp_path, TRAIN_YAML, cpus_per_node=64)
    assert plan.job("train").resources.cpus_per_node == 64
    with pytest.raises(LaunchError, match="--cpus_per_node 100 is not possible on vista: its nodes have 72 CPUs"):
        _plan(tmp_path, TRAIN_YAML, cpus_per_node=100)
