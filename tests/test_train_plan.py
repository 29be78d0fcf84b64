"""The train plan: precedence, batch-size arithmetic, resources, quoting. Pure: nothing is written."""

import subprocess

import pytest
import yaml

from helpers import materialized, script
from hpc.errors import LaunchError
from hpc.jobs.train import apply_global_batch_size, build_plan, merge_config
from hpc.options import LaunchOptions


def _opts(train_yaml, tmp_path, **kw) -> LaunchOptions:
    base = dict(cluster="local", train_config_path=str(train_yaml), experiments_dir=str(tmp_path / "exp"), job_name="t1")
    return LaunchOptions(**{**base, **kw})


def _config(plan) -> dict:
    return yaml.safe_load(plan.files["configs/train.yaml"])


def test_precedence_cli_over_yaml_over_profile_over_builtin():
    merged = merge_config(
        yaml_config={"learning_rate": 1e-3, "report_to": "wandb", "seed": 7},
        overrides={"learning_rate": 5e-4},
        profile_defaults={"report_to": "none", "dataloader_num_workers": 0, "seed": 1},
        builtin={"seed": 42, "run_name": "job", "output_dir": "/out"},
    )
    assert merged["learning_rate"] == 5e-4  # CLI beats YAML
    assert merged["report_to"] == "wandb"  # YAML beats profile
    assert merged["seed"] == 7  # a default never overwrites a YAML value
    assert merged["dataloader_num_workers"] == 0  # profile fills what the YAML lacks
    assert merged["run_name"] == "job" and merged["output_dir"] == "/out"
    assert list(merged)[:3] == ["learning_rate", "report_to", "seed"]  # YAML order first


def test_plan_applies_precedence_end_to_end(train_yaml, tmp_path):
    plan = build_plan(_opts(train_yaml, tmp_path, max_steps=9))
    config = _config(plan)
    assert config["max_steps"] == 9  # CLI
    assert config["learning_rate"] == 0.001  # YAML
    assert config["report_to"] == "none" and config["ddp_timeout"] == 1800  # local profile
    assert config["output_dir"] == "/tmp/hpc-launch/checkpoints/t1"  # CHECKPOINTS_DIR from dotenv/local.env
    assert config["run_name"] == "t1"


@pytest.mark.parametrize(
    "gbs, per_device, world, expected", [(16, 2, 4, 2), (8, 2, 4, 1), (64, 1, 8, 8), (6, 3, 2, 1)]
)
def test_global_batch_size_sets_accumulation_exactly(gbs, per_device, world, expected):
    config = {"per_device_train_batch_size": per_device}
    apply_global_batch_size(config, gbs, world, explicit_accumulation=False)
    assert config["gradient_accumulation_steps"] == expected
    assert per_device * world * config["gradient_accumulation_steps"] == gbs


def test_global_batch_size_that_does_not_divide_is_an_error():
    with pytest.raises(LaunchError, match="--global_batch_size 10 is not a multiple of .* = 4; pick a multiple of 4"):
        apply_global_batch_size({"per_device_train_batch_size": 2}, 10, 2, explicit_accumulation=False)


@pytest.mark.parametrize("gbs", [0, -4])
def test_global_batch_size_below_one_is_refused_not_zero_accumulation(gbs):
    """0 divides by anything: without the check it would write gradient_accumulation_steps: 0 (or -1)."""
    config = {"per_device_train_batch_size": 2}
    with pytest.raises(LaunchError, match=rf"--global_batch_size {gbs} is not a multiple of .* = 4; pick a multiple"):
        apply_global_batch_size(config, gbs, 2, explicit_accumulation=False)
    assert "gradient_accumulation_steps" not in config


def test_global_batch_size_zero_from_the_cli_or_the_yaml_writes_nothing(train_yaml, tmp_path, capsys):
    from hpc.launch import main

    with pytest.raises(LaunchError, match="--global_batch_size 0 is not a multiple"):
        build_plan(_opts(train_yaml, tmp_path, global_batch_size=0))
    upstream = tmp_path / "upstream.yaml"
    upstream.write_text(yaml.safe_dump({**yaml.safe_load(train_yaml.read_text()), "global_batch_size": 0}))
    with pytest.raises(LaunchError, match="global_batch_size 0 is not a multiple"):
        build_plan(_opts(upstream, tmp_path))
    exp = tmp_path / "exp"
    code = main(["--cluster", "local", "--train_config_path", str(train_yaml), "--global_batch_size", "0",
                 "--experiments_dir", str(exp), "--dry_run", "--no-validate"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("hpc-launch: error: --global_batch_size 0 ") and not exp.exists(), err


def test_global_batch_size_contradicting_explicit_accumulation():
    config = {"per_device_train_batch_size": 2, "gradient_accumulation_steps": 3}
    with pytest.raises(LaunchError, match="contradicts --global_batch_size 16 .*needs 2"):
        apply_global_batch_size(config, 16, 4, explicit_accumulation=True)


def test_global_batch_size_counts_nodes_and_gpus(train_yaml, tmp_path, user_profiles):
    user_profiles("big", max_nodes=8)
    plan = build_plan(_opts(train_yaml, tmp_path, cluster="big", num_nodes=2, gpus_per_node=4, global_batch_size=32))
    assert _config(plan)["gradient_accumulation_steps"] == 2  # 32 / (2 per device x 2 nodes x 4 GPUs)
    assert "--nnodes=2 --nproc_per_node=4" in script(plan, "train")


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"num_nodes": 0}, "--num_nodes must be at least 1"),
        ({"num_nodes": 3}, "--num_nodes 3 exceeds the 2 nodes"),
        ({"gpus_per_node": 5}, "--gpus_per_node 5 is not possible on local: its nodes have 4 GPUs"),
        ({"time_limit": "13:00:00"}, "--time_limit 13:00:00 exceeds the 12:00:00 limit of partition gpu"),
        ({"time_limit": "forever"}, "--time_limit 'forever' is not a SLURM time"),
        ({"job_name": "my job"}, "job name 'my job' is not usable"),
        ({"dependency": "afterok:abc"}, "--dependency 'afterok:abc' is not understood"),
        ({"deepspeed": "missing_ds.json"}, "deepspeed config 'missing_ds.json' not found"),
    ],
)
def test_bad_resources_are_refused(train_yaml, tmp_path, kw, message):
    with pytest.raises(LaunchError, match=message):
        build_plan(_opts(train_yaml, tmp_path, **kw))


def test_time_check_skipped_on_another_partition(train_yaml, tmp_path):
    """The profile knows only its own partition's limit; SLURM judges the others at submit."""
    plan = build_plan(_opts(train_yaml, tmp_path, partition="cpu", time_limit="20:00:00"))
    assert "#SBATCH --time=20:00:00" in script(plan, "train")


def test_resources_scale_with_the_gpus_asked_for(train_yaml, tmp_path):
    text = script(build_plan(_opts(train_yaml, tmp_path, gpus_per_node=1)), "train")
    assert "#SBATCH --gres=gpu:1\n" in text
    assert "#SBATCH --cpus-per-task=1\n" in text  # a quarter of the node's 4 CPUs
    assert "#SBATCH --mem=1875M\n" in text  # a quarter of 7500M
    full = script(build_plan(_opts(train_yaml, tmp_path, job_name="t2")), "train")
    assert "#SBATCH --gres=gpu:4\n" in full and "#SBATCH --cpus-per-task=4\n" in full and "--mem=7500M" in full


def test_missing_required_train_keys(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("stage: sft\n")
    with pytest.raises(LaunchError, match="the train config has no 'model_name_or_path'"):
        build_plan(_opts(path, tmp_path))


def test_dependency_syntax(train_yaml, tmp_path):
    plan = build_plan(_opts(train_yaml, tmp_path, dependency="123,afterany:5:6"))
    deps = [(d.kind, d.external) for d in plan.jobs[0].dependencies]
    assert deps == [("afterok", "123"), ("afterany", "5"), ("afterany", "6")]


def test_hostile_values_are_quoted_in_the_script(train_yaml, tmp_path, monkeypatch):
    """A dotenv value and an output path full of shell syntax reach the job literally."""
    marker = tmp_path / "pwned"
    dotenv = tmp_path / "evil.env"
    dotenv.write_text(f"HPC_VENV=/nonexistent\nWEIRD='$(touch {marker}); echo \"x\" `id` ;'\n")
    odd_out = f"{tmp_path}/out dir/$(touch {marker})"
    plan = build_plan(_opts(train_yaml, tmp_path, dotenv=str(dotenv), output_dir=odd_out))
    text = script(plan, "train")
    exports = "\n".join(line for line in text.splitlines() if line.startswith("export WEIRD="))
    out = subprocess.run(["bash", "-c", exports + '\nprintf %s "$WEIRD"'], capture_output=True, text=True)
    assert out.stdout == f'$(touch {marker}); echo "x" `id` ;'
    line = next(ln for ln in text.splitlines() if ln.startswith("output_dir="))
    printed = subprocess.run(["bash", "-c", line + '\nprintf %s "$output_dir"'], capture_output=True, text=True)
    assert printed.stdout == odd_out
    assert not marker.exists()
    assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0


def test_experiment_path_with_spaces_is_refused_for_sbatch_lines(train_yaml, tmp_path):
    plan = build_plan(_opts(train_yaml, tmp_path, experiments_dir=str(tmp_path / "my experiments")))
    with pytest.raises(LaunchError, match="cannot go on an #SBATCH line"):
        materialized(plan)  # the SLURM backend refuses it before anything is written or submitted


def test_offline_cluster_sets_offline_variables_and_online_does_not(train_yaml, tmp_path, user_profiles):
    user_profiles("online", internet=True)
    offline = script(build_plan(_opts(train_yaml, tmp_path)), "train")
    online = script(build_plan(_opts(train_yaml, tmp_path, cluster="online")), "train")
    assert "export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=offline" in offline
    assert "running offline" in offline
    assert "HF_HUB_OFFLINE" not in online


def test_modules_and_extra_sbatch_lines_come_from_the_profile(train_yaml, tmp_path, user_profiles):
    user_profiles("modular", modules=["Stages/2025", "CUDA"], qos="normal", master_addr_suffix="i",
                  slurm={"cluster_names": [], "sbatch_extra": ["--constraint=gpu"], "gpu_request": "gpus_per_node"})
    text = script(build_plan(_opts(train_yaml, tmp_path, cluster="modular")), "train")
    assert "module load Stages/2025 CUDA\n" in text
    assert "#SBATCH --constraint=gpu\n" in text and "#SBATCH --qos=normal\n" in text
    assert "#SBATCH --gpus-per-node=4\n" in text and "--gres" not in text
    assert 'export MASTER_ADDR="${head_node}i"' in text and "NodeAddr" not in text


def test_tunnel_needs_a_profile_that_allows_it(train_yaml, tmp_path):
    with pytest.raises(LaunchError, match="--tunnel: the local profile has no tunnel_host"):
        build_plan(_opts(train_yaml, tmp_path, tunnel=True))


def test_tunnel_renders_for_the_login_node_and_keeps_cluster_networks_direct(train_yaml, tmp_path, user_profiles,
                                                                             monkeypatch):
    monkeypatch.setattr("socket.gethostname", lambda: "jrlogin07.jureca")
    user_profiles("tun", tunnel_host="{login}i", tunnel_direct=["10.0.0.0/8"])
    text = script(build_plan(_opts(train_yaml, tmp_path, cluster="tun", tunnel=True)), "train")
    assert "  jrlogin07i &\n" in text and 'echo "localnet 10.0.0.0/255.0.0.0"' in text
    assert "127.0.0.0" not in text and "HF_HUB_OFFLINE" not in text  # the tunnel brings the internet
    assert "proxychains4 -q torchrun" in text and '-i "$SSH_KEY"' in text
