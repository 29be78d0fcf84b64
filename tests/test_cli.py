"""The CLI contract: bad input is one line and exit 2 with nothing written; a dry run submits nothing."""

import os
import subprocess
import sys

import pytest

from hpc import ROOT, __version__

from helpers import run_cli, run_python_without_network


@pytest.fixture
def fake_slurm(tmp_path):
    """sbatch/scontrol/sacct on PATH that only record that they were called."""
    bindir = tmp_path / "fakebin"
    bindir.mkdir()
    calls = tmp_path / "calls.log"
    for name in ("sbatch", "scontrol", "sacct", "squeue", "scancel", "srun"):
        tool = bindir / name
        tool.write_text(f'#!/bin/sh\necho "{name} $*" >> {calls}\necho 1\n')
        tool.chmod(0o755)
    return {"PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}, calls


def _bad(tmp_path, fake_slurm, *args, env=None):
    exp = tmp_path / "exp"
    path_env, calls = fake_slurm
    result = run_cli("--experiments_dir", str(exp), *args, env={**path_env, **(env or {})})
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hpc-launch: error: "), result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert not exp.exists(), "nothing may be written for bad input"
    assert not calls.exists(), "nothing may be submitted for bad input"
    return lines[0]


def test_unknown_cluster_lists_known_ones(tmp_path, fake_slurm, train_yaml):
    line = _bad(tmp_path, fake_slurm, "--cluster", "nosuch", "--train_config_path", str(train_yaml))
    assert "unknown cluster 'nosuch'; known clusters:" in line and "local" in line


def test_missing_yaml(tmp_path, fake_slurm):
    line = _bad(tmp_path, fake_slurm, "--cluster", "local", "--train_config_path", str(tmp_path / "nope.yaml"))
    assert "does not exist" in line and "--train_config_path" in line


def test_no_yaml_given(tmp_path, fake_slurm):
    assert "needs --train_config_path" in _bad(tmp_path, fake_slurm, "--cluster", "local")


def test_malformed_yaml(tmp_path, fake_slurm):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model_name_or_path: [x\n")
    assert "is not valid YAML" in _bad(tmp_path, fake_slurm, "--cluster", "local", "--train_config_path", str(bad))


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--time_limit", "soon"], "is not a SLURM time"),
        (["--num_nodes", "0"], "--num_nodes must be at least 1"),
        (["--num_nodes", "two"], "argument --num_nodes: invalid int value"),
        (["--num-nodes", "two"], "argument --num_nodes: invalid int value"),  # the dashed spelling is the same option
        (["--no-wait"], "unrecognized arguments: --no-wait"),  # --wait is a switch, not --x/--no-x
        (["--dry-run=yes"], "argument --dry_run: ignored explicit argument 'yes'"),
        (["--dry"], "unrecognized arguments: --dry"),  # no abbreviations
        (["--gpus_per_node", "8"], "--gpus_per_node 8 is not possible on local"),
        (["--time_limit", "2-00:00:00"], "exceeds the 12:00:00 limit of partition gpu on local"),
        (["--job_type", "nosuch"], "argument --job_type: invalid choice"),
        (["--eval_model", "m", "--eval_tasks", "t"], "--eval_model is for --job_type eval"),
        (["--consolidate"], "the train config has no 'deepspeed' key"),
        (["--job_type", "consolidate", "--consolidate_input", "/no/such/ckpt"], "--consolidate_input: /no/such/ckpt does not exist"),
    ],
)
def test_bad_options(tmp_path, fake_slurm, train_yaml, args, expected):
    line = _bad(tmp_path, fake_slurm, "--cluster", "local", "--train_config_path", str(train_yaml), *args)
    assert expected in line


def test_secrets_file_readable_by_others(tmp_path, fake_slurm, train_yaml):
    secrets = tmp_path / "secrets.env"
    secrets.write_text("HF_TOKEN=hf_abc\n")
    secrets.chmod(0o644)
    line = _bad(tmp_path, fake_slurm, "--cluster", "local", "--train_config_path", str(train_yaml),
                env={"DC_AGENT_SECRET_ENV": str(secrets)})
    assert f"chmod 600 {secrets}" in line


def test_profile_with_unknown_key(tmp_path, fake_slurm, train_yaml, user_profiles):
    user_profiles("mylab", partitoin="gpu")
    line = _bad(tmp_path, fake_slurm, "--cluster", "mylab", "--train_config_path", str(train_yaml),
                env={"HPC_LAUNCH_PROFILES": os.environ["HPC_LAUNCH_PROFILES"]})
    assert "mylab.yaml: unknown key 'partitoin'" in line


def test_dry_run_writes_everything_and_submits_nothing(tmp_path, fake_slurm, train_yaml):
    path_env, calls = fake_slurm
    exp = tmp_path / "exp"
    result = run_cli("--cluster", "local", "--train_config_path", str(train_yaml), "--experiments_dir", str(exp),
                     "--job_name", "dry1", "--dry_run", "--no-validate", env=path_env)
    assert result.returncode == 0, result.stderr
    assert "--- train: sbatch --parsable " + str(exp / "dry1/sbatch/train.sbatch") in result.stdout
    assert "#SBATCH --job-name=dry1" in result.stdout and "dry run: nothing submitted" in result.stdout
    for rel in ("manifest.json", "sbatch/train.sbatch", "configs/train.yaml", "configs/launch.yaml", "logs"):
        assert (exp / "dry1" / rel).exists(), rel
    assert not calls.exists(), "a dry run must not call any SLURM command"


def test_dry_run_makes_no_network_call_and_imports_nothing_heavy(tmp_path, train_yaml):
    """In a fresh interpreter: every socket use fails loudly, then the modules loaded are listed."""
    code = f"""
import sys
from hpc import launch
code = launch.main(["--cluster", "local", "--train_config_path", {str(train_yaml)!r}, "--experiments_dir",
                    {str(tmp_path / "exp")!r}, "--consolidate", "--deepspeed", "examples/train/ds_z3.json",
                    "--eval_tasks", "d.json", "--dry_run"])
heavy = {{"wandb", "supabase", "huggingface_hub", "sky", "torch", "transformers", "deepspeed"}} & set(sys.modules)
print("exit", code, "heavy", sorted(heavy))
"""
    probe = run_python_without_network(code)
    assert probe.stdout.strip().splitlines()[-1] == "exit 0 heavy []", probe.stdout + probe.stderr
    assert "dry run: nothing submitted" in probe.stdout


def test_help_lists_the_common_options_and_names_job_types_and_backends():
    top = run_cli("--help")
    assert top.returncode == 0 and len(top.stdout.splitlines()) <= 120, top.stdout
    assert "--dry_run" in top.stdout and "--partition" in top.stdout and "--train_config_path" not in top.stdout
    assert all(f"  {name} " in top.stdout for name in ("train", "datagen", "consolidate", "eval", "run"))
    assert "--backend {slurm,skypilot}" in top.stdout and "--cloud_provider" not in top.stdout
    train = run_cli("--job_type", "train", "--help").stdout
    assert "--train_config_path" in train and "--global_batch_size" in train and "--datagen_config" not in train
    assert "--dry-run" not in train and "--train-config-path" not in train  # accepted, not listed
    datagen = run_cli("--job-type=datagen", "--help").stdout
    assert "--datagen_config" in datagen and "--train_config_path" not in datagen
    cloud = run_cli("--job_type", "run", "--backend", "skypilot", "--help").stdout
    assert "--cloud_provider" in cloud and "--command" in cloud and "--eval_tasks" not in cloud


def test_help_imports_no_heavy_library():
    result = run_cli("--help")
    assert result.returncode == 0 and "--dry_run" in result.stdout
    code = ("import sys, hpc.launch; hpc.launch.parser(); "
            "print(sorted(m for m in ('wandb', 'supabase', 'huggingface_hub', 'torch', 'sky') if m in sys.modules))")
    probe = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert probe.returncode == 0 and probe.stdout.strip() == "[]", probe


def test_version():
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"hpc-launch {__version__}"


def test_dashed_spellings_are_still_accepted():
    from hpc.launch import options_from_args, parser

    opts = options_from_args(parser().parse_args(
        ["--job-type", "datagen", "--job-name", "x", "--dry-run", "--train-config-path", "t.yaml", "--max-steps", "9",
         "--no-enable-task-gen", "--enable-trace-gen"]))
    assert (opts.job_type, opts.job_name, opts.dry_run, opts.train_config_path) == ("datagen", "x", True, "t.yaml")
    assert opts.train_overrides == {"max_steps": 9}
    assert opts.enable_task_gen is False and opts.enable_trace_gen is True
    assert options_from_args(parser().parse_args(["--job_name", "x"])) == options_from_args(
        parser().parse_args(["--job-name", "x"]))


def test_unknown_dataset_is_caught_before_anything_is_written(tmp_path, fake_slurm):
    """The datasets are checked against dataset_info.json at launch (a name that is no Hub id must be there)."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "dataset_info.json").write_text('{"mine": {"file_name": "mine.json"}}')
    config = tmp_path / "sft.yaml"
    config.write_text(f"model_name_or_path: m\ndataset: no_such_dataset\ndataset_dir: {data}\n")
    line = _bad(tmp_path, fake_slurm, "--cluster", "local", "--train_config_path", str(config))
    assert line == (f"hpc-launch: error: dataset 'no_such_dataset' is not in {data}/dataset_info.json and is not a Hub "
                    "id (org/name); add it there or name a Hub dataset")
