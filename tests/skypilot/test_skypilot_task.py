"""The SkyPilot backend's tasks, without SkyPilot: what a dry run (--no-validate) writes for the cloud flags."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from helpers import run_cli

CANARY = "canary-7f3d9b2e-never-in-a-file"


def dry(tmp_path: Path, *args: str, name: str = "t", env: dict | None = None):
    """A --backend skypilot dry run without SkyPilot's validation; (result, the task YAMLs by job key)."""
    exp = tmp_path / "exp"
    result = run_cli("--backend", "skypilot", "--experiments_dir", str(exp), "--job_name", name, "--dry_run",
                     "--no-validate", *args, env=env)
    tasks = {p.stem: yaml.safe_load(p.read_text()) for p in (exp / name / "sky").glob("*.yaml")}
    return result, tasks


def run_task(tmp_path: Path, *args: str) -> dict:
    result, tasks = dry(tmp_path, "--job_type", "run", "--command", "echo hi", "--workdir", str(tmp_path), *args)
    assert result.returncode == 0, result.stderr
    return tasks["run"]


def test_fallbacks_become_ordered_resources_never_a_comma_string(tmp_path):
    task = run_task(tmp_path, "--cloud-provider", "gcp,aws", "--accelerator", "H100:1,A100-80GB:1", "--use-spot")
    entries = task["resources"]["ordered"]
    assert [(e["accelerators"], e["infra"]) for e in entries] == [
        ("H100:1", "gcp"), ("H100:1", "aws"), ("A100-80GB:1", "gcp"), ("A100-80GB:1", "aws")]
    assert all(e["use_spot"] is True and "," not in e["accelerators"] for e in entries)
    assert all(e["autostop"] == {"idle_minutes": 30, "down": False} for e in entries)


def test_one_choice_is_plain_resources_with_region_zone_and_cpu_sizes(tmp_path):
    task = run_task(tmp_path, "--cloud-provider", "aws", "--region", "us-east-1", "--zone", "us-east-1a")
    assert task["resources"] == {"infra": "aws/us-east-1/us-east-1a", "cpus": "2+", "memory": "4+",
                                 "autostop": {"idle_minutes": 30, "down": False}}
    assert task["workdir"] == str(tmp_path) and task["name"] == "t"
    assert "bash -c 'echo hi'" in task["run"] and "HPC_OUTPUT_DIR" in task["run"]


@pytest.mark.parametrize("accelerator,image", [("H100:1", "gpu-1x"), ("H100:2", "gpu-4x"), ("H100:4", "gpu-4x"),
                                               ("H100:8", "gpu-8x")])
def test_docker_image_auto_by_gpu_count(tmp_path, accelerator, image):
    task = run_task(tmp_path, "--accelerator", accelerator, "--docker-image", "auto")
    assert task["resources"]["image_id"] == f"docker:ghcr.io/open-thoughts/openthoughts-agent:{image}"


def test_explicit_image_task_name_no_sync_and_gpus_from_gpus_per_node(tmp_path):
    task = run_task(tmp_path, "--accelerator", "L4", "--gpus_per_node", "2", "--docker-image", "my/img:1",
                    "--task-name", "bench", "--no-sync")
    assert task["resources"]["accelerators"] == "L4:2" and task["resources"]["image_id"] == "docker:my/img:1"
    assert task["name"] == "bench" and "workdir" not in task


def test_autostop_on_slurm_tears_down_and_minus_one_never_stops(tmp_path):
    slurm = run_task(tmp_path, "--cloud-provider", "slurm/mycluster")
    assert slurm["resources"]["autostop"] == {"idle_minutes": 30, "down": True}  # Slurm cannot stop a cluster
    never = run_task(tmp_path, "--autostop", "-1")
    assert "autostop" not in never["resources"]


def test_secrets_reach_no_file_and_no_output(tmp_path):
    secrets = tmp_path / "secrets.env"
    secrets.write_text(f"HPC_CANARY={CANARY}\n")
    secrets.chmod(0o600)
    result, _ = dry(tmp_path, "--job_type", "run", "--command", "echo hi", "--secrets-env", str(secrets))
    assert result.returncode == 0, result.stderr
    assert CANARY not in result.stdout + result.stderr
    for path in (tmp_path / "exp").rglob("*"):
        if path.is_file():
            assert CANARY not in path.read_text(errors="replace"), path


def test_train_runs_torchrun_over_skypilot_nodes_then_consolidate_and_eval_exec(tmp_path):
    result, tasks = dry(tmp_path, "--cluster", "local", "--train_config_path", "examples/train/tiny_sft_zero3.yaml",
                        "--gpus_per_node", "0", "--num_nodes", "2", "--consolidate", "--eval_tasks",
                        "build/tiny/data/tiny_eval.json", "--cloud-provider", "slurm/localslurm/gpu", name="tr")
    assert result.returncode == 0, result.stderr
    assert "--- train: sky launch -c hpc-tr" in result.stdout
    assert "--- consolidate: sky exec hpc-tr" in result.stdout and "--- eval: sky exec hpc-tr" in result.stdout
    train = tasks["train"]
    assert train["num_nodes"] == 2
    assert 'master=$(echo "$SKYPILOT_NODE_IPS" | head -n 1)' in train["run"]
    assert '--node_rank="$SKYPILOT_NODE_RANK"' in train["run"] and "lf_train.py" in train["run"]
    exp = str(tmp_path / "exp" / "tr")
    assert all(t["file_mounts"] == {exp: exp} for t in tasks.values())
    assert "consolidate.py" in tasks["consolidate"]["run"]
    manifest = json.loads((tmp_path / "exp" / "tr" / "manifest.json").read_text())
    assert manifest["backend"] == "skypilot" and [j["key"] for j in manifest["jobs"]] == ["train", "consolidate",
                                                                                          "eval"]


@pytest.mark.parametrize("args,message", [
    (("--region", "us-east-1"), "--region/--zone need --cloud-provider"),
    (("--accelerator", "H100:x"), "is not NAME or NAME:COUNT"),
    (("--accelerator", "H100:1,,A100:1"), "has an empty entry"),
    (("--gpus_per_node", "2"), "name them with --accelerator"),
    (("--cluster-name", "Bad_Name"), "is not a SkyPilot cluster name"),
    (("--autostop", "-2"), "--autostop -2"),
    (("--remote-output-subdir", "../up"), "--remote-output-subdir"),
])
def test_bad_cloud_flags_exit_2_with_one_line(tmp_path, args, message):
    result, _ = dry(tmp_path, "--job_type", "run", "--command", "echo hi", *args)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_task_file_is_launched_as_it_is_and_refuses_resource_flags(tmp_path):
    source = Path(__file__).resolve().parents[2] / "examples" / "sky" / "cpu.yaml"
    result, tasks = dry(tmp_path, "--task", str(source))
    assert result.returncode == 0, result.stderr
    assert tasks["run"] == yaml.safe_load(source.read_text())
    result, _ = dry(tmp_path, "--task", str(source), "--accelerator", "H100:1", name="t2")
    assert result.returncode == 2 and "as it is" in result.stderr


def test_datagen_and_slurm_dependencies_are_refused(tmp_path):
    result, _ = dry(tmp_path, "--job_type", "run", "--command", "echo hi", "--dependency", "afterok:12")
    assert result.returncode == 2 and "SLURM jobs" in result.stderr


def test_run_job_type_on_slurm_renders_a_command_script(tmp_path):
    exp = tmp_path / "exp"
    result = run_cli("--cluster", "local", "--job_type", "run", "--command", "echo hello $USER", "--workdir",
                     str(tmp_path), "--experiments_dir", str(exp), "--job_name", "r", "--dry_run", "--no-validate")
    assert result.returncode == 0, result.stderr
    script = (exp / "r" / "sbatch" / "run.sbatch").read_text()
    assert "bash -c 'echo hello $USER'" in script and f"--chdir={tmp_path}" in script
