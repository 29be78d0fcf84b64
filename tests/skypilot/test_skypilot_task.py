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


# In-process unit tests of hpc.backends.skypilot.task (no subprocess: fast enough for the mutation score).

def _cloud(**options):
    from hpc.backends.skypilot.task import Cloud
    from hpc.options import LaunchOptions

    return Cloud.from_options(LaunchOptions(**options), Path("/tmp/exps/My_Exp.1"))


def _cloud_error(**options) -> str:
    from hpc.errors import LaunchError

    with pytest.raises(LaunchError) as err:
        _cloud(**options)
    return str(err.value)


def test_cloud_options_are_checked_and_normalised():
    cloud = _cloud(cloud_provider="aws", region="us-east-1", zone="us-east-1a", accelerator="H100:1, A100:2",
                   remote_output_subdir="/XL_runs/run/", local_sync_dir="rel/dir", task="t.yaml", no_sync=True,
                   timeout_minutes=0.5, autostop=-1)
    assert cloud.providers == ("aws",) and cloud.accelerators == ("H100:1", "A100:2")
    assert cloud.infras() == ["aws/us-east-1/us-east-1a"] and cloud.cluster == "hpc-my-exp-1"
    assert cloud.output_subdir == "XL_runs/run" and cloud.sync is False and cloud.autostop == -1
    assert cloud.timeout_minutes == 0.5
    assert cloud.local_sync_dir == Path.cwd() / "rel" / "dir" and cloud.task_file == Path.cwd() / "t.yaml"
    plain = _cloud()
    assert plain.infras() == [None] and plain.local_sync_dir == Path("/tmp/exps/My_Exp.1/outputs")
    assert plain.sync is True and plain.task_file is None and _cloud(cloud_provider="gcp,aws").infras() == ["gcp", "aws"]


@pytest.mark.parametrize("options, message", [
    ({"cloud_provider": "aws", "zone": "us-east-1a"}, "--zone needs --region"),
    ({"cloud_provider": "aws/us-east-1", "region": "us-east-1"},
     "give the region either inside --cloud-provider (aws/us-east-1) or with --region"),
    ({"zone": "z"}, "--region/--zone need --cloud-provider (regions are named per cloud)"),
    ({"timeout_minutes": 0}, "--timeout_minutes 0: give a positive number of minutes"),
    ({"autostop": -2}, "--autostop -2: give idle minutes, or -1 for never"),
    *(({"remote_output_subdir": d}, f"--remote-output-subdir {d!r}: give a relative directory under the synced "
       "working directory, e.g. outputs") for d in ("/", "~/out", "a/../../b")),
    ({"accelerator": "H100:0"}, "--accelerator 'H100:0' is not NAME or NAME:COUNT (e.g. H100:1)"),
    ({"accelerator": "H100:1,,A100:1"},
     "--accelerator 'H100:1,,A100:1' has an empty entry; separate the fallbacks with single commas"),
    ({"cloud_provider": "aws,"}, "--cloud-provider 'aws,' has an empty entry; separate the fallbacks with single commas"),
    ({"accelerator": ""}, "--accelerator '' has an empty entry; separate the fallbacks with single commas"),
    ({"cluster_name": "a" * 41}, f"--cluster-name {'a' * 41!r} is not a SkyPilot cluster name; use up to 40 lower-case "
     "letters, digits and '-', starting with a letter"),
])
def test_bad_cloud_options_are_refused_with_the_reason(options, message):
    assert _cloud_error(**options) == message


def test_cluster_names_from_job_names_fit_skypilot():
    from hpc.backends.skypilot.task import cluster_name

    assert cluster_name("My_Exp.1") == "hpc-my-exp-1"
    assert cluster_name("x" * 35 + "-yz") == "hpc-" + "x" * 35 and len(cluster_name("a" * 80)) == 40
    assert _cloud(cluster_name="a" * 40).cluster == "a" * 40 and _cloud(autostop=0).autostop == 0


def _job(gpus=0, cpus=4, mem=None):
    from types import SimpleNamespace

    return SimpleNamespace(key="train", resources=SimpleNamespace(gpus_per_node=gpus, cpus_per_node=cpus, mem=mem))


@pytest.mark.parametrize("mem, gigabytes", [("131072M", "128+"), ("16G", "16+"), ("16g", "16+"), ("2T", "2048+"),
                                            ("3145728K", "3+"), ("512K", "1+"), ("4096", "4+"), ("100", "1+")])
def test_memory_is_asked_in_whole_gigabytes(mem, gigabytes):
    from hpc.backends.skypilot.task import resources

    assert resources(_job(mem=mem), _cloud()) == {"cpus": "4+", "memory": gigabytes,
                                                  "autostop": {"idle_minutes": 30, "down": False}}


def test_resources_fallbacks_images_spot_and_autostop():
    from hpc.backends.skypilot.task import resources

    cloud = _cloud(cloud_provider="kubernetes,aws", accelerator="H100,L4:5", use_spot=True,
                   docker_image="docker:my/img:1", autostop=5, down=False)
    entries = resources(_job(gpus=2), cloud)["ordered"]
    assert [(e["infra"], e["accelerators"], e["autostop"]["down"]) for e in entries] == [
        ("kubernetes", "H100:2", True), ("aws", "H100:2", False), ("kubernetes", "L4:5", True), ("aws", "L4:5", False)]
    assert all(e["use_spot"] is True and e["image_id"] == "docker:my/img:1" for e in entries)
    assert all(e["autostop"]["idle_minutes"] == 5 and "cpus" not in e for e in entries)
    auto = _cloud(accelerator="A:9,B", docker_image="auto", down=True)
    images = [e["image_id"].rsplit(":", 1)[1] for e in resources(_job(gpus=0), auto)["ordered"]]
    assert images == ["gpu-8x", "gpu-1x"]  # 9 GPUs: the largest image; B with no count: 1 GPU
    assert resources(_job(), _cloud(docker_image="auto", autostop=-1)) == {
        "cpus": "4+", "image_id": "docker:ghcr.io/open-thoughts/openthoughts-agent:gpu-1x"}
    assert resources(_job(), _cloud(down=True))["autostop"] == {"idle_minutes": 30, "down": True}
    assert resources(_job(), _cloud(autostop=0))["autostop"] == {"idle_minutes": 0, "down": False}
    assert resources(_job(), _cloud(cloud_provider="kubernetes/my-ctx"))["autostop"]["down"] is True


def test_gpus_without_an_accelerator_are_refused_naming_the_job():
    from hpc.backends.skypilot.task import resources
    from hpc.errors import LaunchError

    with pytest.raises(LaunchError) as err:
        resources(_job(gpus=2), _cloud())
    assert str(err.value) == ("the train job asks for 2 GPU(s) per node: name them with --accelerator (e.g. "
                              "H100:1,A100-80GB:1), or pass --gpus_per_node 0")


def _plan_job(body, *, job_type="eval", offline=False, nodes=1, array=None, dependencies=(), activation=""):
    from types import SimpleNamespace as NS

    job = NS(key=job_type, name=f"t_{job_type}", job_type=job_type, body=body, array=array, dependencies=dependencies,
             resources=NS(nodes=nodes, gpus_per_node=0, cpus_per_node=2, mem=None),
             prelude=NS(offline=offline, env={"A": 1, "HPC_EXPERIMENT_DIR": "/e/x"}, workdir=Path("/w")))
    return job, NS(profile=NS(env_activation=activation), experiment_dir=Path("/e/x"))


def test_a_command_task_runs_its_environment_then_its_command():
    from hpc.backends.skypilot.task import task_config
    from hpc.spec import Command

    job, plan = _plan_job(Command(["lm_eval", "--out", "a b"], make_dirs=["/e/x/res ults"]), offline=True, nodes=2,
                          activation="source /opt/env/bin/activate")
    config = task_config(job, plan, _cloud(remote_output_subdir="my out"))
    assert config["name"] == "t_eval" and config["num_nodes"] == 2 and config["envs"] == {
        "A": "1", "HPC_EXPERIMENT_DIR": "/e/x"}
    assert config["workdir"] == "/w" and config["file_mounts"] == {"/e/x": "/e/x"}
    assert config["run"] == (
        "set -eo pipefail\nexport HPC_OUTPUT_DIR=\"$HOME\"/sky_workdir/'my out'\nmkdir -p \"$HPC_OUTPUT_DIR\"\n"
        "source /opt/env/bin/activate\nexport HF_HUB_OFFLINE=1\nexport TRANSFORMERS_OFFLINE=1\n"
        "export HF_DATASETS_OFFLINE=1\nexport WANDB_MODE=offline\nmkdir -p '/e/x/res ults'\nlm_eval --out 'a b'\n")
    online, plan = _plan_job(Command(["true"]), job_type="run")
    config = task_config(online, plan, _cloud(task_name="bench", no_sync=True))
    assert config == {"name": "bench", "resources": {"cpus": "2+", "autostop": {"idle_minutes": 30, "down": False}},
                      "envs": {"A": "1", "HPC_EXPERIMENT_DIR": "/e/x"},
                      "run": "set -eo pipefail\nexport HPC_OUTPUT_DIR=\"$HOME\"/sky_workdir/outputs\n"
                             "mkdir -p \"$HPC_OUTPUT_DIR\"\ntrue\n"}


def test_a_train_task_runs_torchrun_over_the_nodes():
    from hpc.backends.skypilot.task import run_script
    from hpc.spec import Train

    body = Train(nproc_per_node=1, entrypoint=["python", "lf_train.py"], config_path=Path("/e/x/configs/t.yaml"),
                 output_dir="/o", max_restarts=0, signal_seconds=120, summary_script="s.py")
    job, plan = _plan_job(body, job_type="train")
    script = run_script(job, plan, _cloud()).splitlines()
    assert script[3:6] == ['export HPC_STOP_REQUEST="$HPC_EXPERIMENT_DIR/state/train.stop_requested"',
                           'export HPC_STOPPED_EARLY="$HPC_EXPERIMENT_DIR/state/train.stopped_early"',
                           'mkdir -p "$HPC_EXPERIMENT_DIR/state"']
    assert script[6:9] == [
        'nproc=${SKYPILOT_NUM_GPUS_PER_NODE:-0}; [ "$nproc" -gt 0 ] || nproc=1',
        'master=$(echo "$SKYPILOT_NODE_IPS" | head -n 1)',
        'echo "[hpc-launch] train: node rank $SKYPILOT_NODE_RANK of $SKYPILOT_NUM_NODES, $nproc process(es), '
        'rendezvous at $master:29500"']
    assert script[-1] == ('torchrun --nnodes="$SKYPILOT_NUM_NODES" --node_rank="$SKYPILOT_NODE_RANK" '
                          '--nproc_per_node="$nproc" --master_addr="$master" --master_port=29500 '
                          'python lf_train.py /e/x/configs/t.yaml')


def test_arrays_external_dependencies_and_other_bodies_are_refused_naming_the_job():
    from hpc.backends.skypilot.task import task_config
    from hpc.errors import LaunchError
    from hpc.spec import Command, Dependency

    cases = [(_plan_job(Command(["x"]), job_type="traces", array=object()), "the traces job is an array; arrays run"),
             (_plan_job(Command(["x"]), dependencies=(Dependency("afterok", job="a"), Dependency("afterok",
                                                     external="12"))), "--dependency names SLURM jobs"),
             (_plan_job(object(), job_type="server"), "the server job (object) runs on SLURM only; SkyPilot runs run, train, consolidate and eval jobs")]
    for (job, plan), message in cases:
        with pytest.raises(LaunchError) as err:
            task_config(job, plan, _cloud())
        assert str(err.value).startswith(message)
    job, plan = _plan_job(Command(["x"]), dependencies=(Dependency("afterok", job="a"),))
    assert task_config(job, plan, _cloud())["run"].endswith("\nx\n")  # a dependency inside the launch is fine
