"""Hostile input through the CLI (hpc.launch.main, in-process): one line on stderr, exit 2, nothing written, nothing
submitted."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from hpc.launch import main

from helpers import TRAIN_YAML


@pytest.fixture
def launch(tmp_path, recording_slurm, capsys):
    """launch(*args) -> the one error line of a refused launch (SLURM's commands only record that they ran)."""
    calls, exp = recording_slurm, tmp_path / "exp"

    def run(*args: str, experiments: Path = exp) -> str:
        code = main(["--cluster", "local", "--experiments_dir", str(experiments), "--no-validate", *args])
        out, err = capsys.readouterr()
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("hpc-launch: error: "), (code, out, err)
        assert "Traceback" not in err and not exp.exists() and not calls.exists()
        return lines[0].removeprefix("hpc-launch: error: ")

    return run


def _file(tmp_path: Path, name: str, content: str | bytes) -> str:
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return str(path)


@pytest.mark.parametrize("content, expected", [
    (b"model_name_or_path: \xff\xfe\n", "is not UTF-8 text (byte 20 is not); save it as UTF-8"),
    ("model_name_or_path: a\nmodel_name_or_path: b\n", "is not valid YAML (found duplicate key 'model_name_or_path'"),
    ("- just\n- a list\n", "must be a YAML mapping of LLaMA-Factory keys, not a list"),
    ("model_name_or_path: m\ndataset: d\nper_device_train_batch_size: many\nglobal_batch_size: 8\n",
     "per_device_train_batch_size 'many' is not a whole number of at least 1"),
    ("1: a\n", "key 1 is not a name"),
])
def test_train_yaml(launch, tmp_path, content, expected):
    assert expected in launch("--train_config_path", _file(tmp_path, "t.yaml", content))


def test_train_yaml_is_a_directory_or_huge(launch, tmp_path):
    assert launch("--train_config_path", str(tmp_path)) == (
        f"train config {tmp_path} is a directory, not a file; check --train_config_path")
    huge = tmp_path / "huge.yaml"
    with open(huge, "wb") as out:
        out.truncate(50 * 1024 * 1024)
    assert "has 52,428,800 bytes, more than the 1,048,576 a train config may have" in launch(
        "--train_config_path", str(huge))


@pytest.fixture
def train(tmp_path) -> str:
    return _file(tmp_path, "sft.yaml", yaml.safe_dump(TRAIN_YAML))


@pytest.mark.parametrize("content, expected", [
    (b"HPC_VENV=/opt/v\xe9nv\n", "is not UTF-8 text"),
    ("HF=${HF_TOKEN}\n", "HF interpolates ${HF_TOKEN}, which looks like a secret"),
    ("SUPABASE_SERVICE_ROLE_KEY=abc\n", "SUPABASE_SERVICE_ROLE_KEY looks like a secret; move it to your own secrets file"),
    ("DATABASE_URL=postgresql://me:hunter2@db/x\n", "the value of DATABASE_URL holds a password or token in a URL"),
    ("this is not a dotenv line\n", "line 1 is not KEY=VALUE"),
])
def test_dotenv(launch, tmp_path, train, content, expected):
    assert expected in launch("--train_config_path", train, "--dotenv", _file(tmp_path, "my.env", content))


def test_dotenv_directory(launch, tmp_path, train):
    (tmp_path / "envdir").mkdir()
    assert launch("--train_config_path", train, "--dotenv", str(tmp_path / "envdir")) == (
        f"dotenv file {tmp_path / 'envdir'} is a directory, not a file; pass --dotenv FILE or fix the profile's dotenv")


@pytest.mark.parametrize("flag, value", [("--train_extra_args", "--run_name 'unbalanced"),
                                         ("--eval_extra_args", '--limit "5'),
                                         ("--train_extra_args", "--lora_target [q_proj")])
def test_unbalanced_pass_through_arguments(launch, train, user_profiles, flag, value):
    user_profiles("noeval", eval_command=None)  # the built-in harness, which takes --eval_extra_args
    extra = ["--eval_tasks", "hellaswag"] if flag == "--eval_extra_args" else []
    line = launch("--train_config_path", train, flag, value, *extra, "--cluster", "noeval")
    assert line.startswith(flag) and ("quot" in line or "not valid YAML" in line)


def _datagen(tmp_path: Path, config: str, *extra: str) -> list[str]:
    _file(tmp_path, "gen.py", "")
    return ["--job_type", "datagen", "--datagen_config", _file(tmp_path, "dg.yaml", config),
            "--datagen_script", "gen.py", *extra]


@pytest.mark.parametrize("config, extra, expected", [
    ("engine: none\nmodel: m\nchunk_size: many\n", (), "chunk_size must be a whole number of at least 1, not 'many'"),
    ("engine: vllm_local\nmodel: m\nserver: {command: [vllm, serve], health_timeout: -5}\n", (),
     "server.health_timeout must be a whole number of at least 1, not -5"),
    ("engine: vllm_local\nmodel: m\nserver: {command: 'vllm serve'}\n", (), "server.command must be a list"),
    ("engine: vllm_local\nmodel: m\nserver: {command: [vllm, '{modle}']}\n", (), "the server command has a bad placeholder"),
    ("engine: {type: vllm_local}\nvllm_server: {model_path: m, tensor_parallel_size: 0}\n", (),
     "vllm_server.tensor_parallel_size must be at least 1, not 0"),
    ("engine: {type: vllm_local}\nbackend: {healthcheck_max_attempts: -3}\nvllm_server: {model_path: m}\n", (),
     "backend.healthcheck_max_attempts must be at least 1, not -3"),
    ("engine: none\nmodel: m\n", ("--server_wait_timeout", "-1"), "--server_wait_timeout must be above 0 (got -1)"),
    ("engine: none\nmodel: m\n", ("--datagen_extra_args", "--num-tasks '3"), "--datagen_extra_args is not valid shell"),
    ("engine: {type: vllm_local}\nvllm_server: {model_path: m, extra_args: \"--x 'y\"}\n", (),
     "vllm_server.extra_args \"--x 'y\" is not valid shell quoting"),
    (b"engine: n\xf6ne\n", (), "is not UTF-8 text"),
    ("engine: none\nengine: none\n", (), "found duplicate key 'engine'"),
])
def test_datagen_config(launch, tmp_path, config, extra, expected):
    assert expected in launch(*_datagen(tmp_path, config, *extra))


def test_derived_job_names_fit_and_a_long_job_name_says_what_fits(launch, tmp_path, train):
    from hpc.jobs.evaluate import build_plan
    from hpc.options import LaunchOptions

    model = tmp_path / ("m" * 120)
    model.mkdir()
    (model / "config.json").write_text("{}")
    plan = build_plan(LaunchOptions(cluster="local", job_type="eval", eval_model=str(model), eval_tasks="t",
                                    experiments_dir=str(tmp_path / "e"), dry_run=True))
    assert all(len(job.name) <= 96 for job in plan.jobs)
    (tmp_path / "ds.json").write_text("{}")
    assert launch("--train_config_path", train, "--consolidate", "--deepspeed", "ds.json", "--job_name", "j" * 90) == (
        f"--job_name '{'j' * 90}' is too long for this launch: its consolidate job would be named "
        f"'{'j' * 90}_consolidate' (102 characters, at most 96); pass a --job_name of at most 84 characters")


def test_experiments_dir_that_cannot_hold_experiments(launch, tmp_path, train):
    (tmp_path / "afile").write_text("")
    assert launch("--train_config_path", train, experiments=tmp_path / "afile" / "exp").startswith(
        f"experiments dir {tmp_path / 'afile' / 'exp'}: {tmp_path / 'afile'} is a file, not a directory")
    assert launch("--train_config_path", train, experiments=Path("/proc/hpc-launch")).startswith(
        "experiments dir /proc/hpc-launch is on a proc pseudo filesystem")


def test_experiments_dir_read_only_or_full(tmp_path, monkeypatch):
    """Root writes anywhere, so a read-only directory and a full filesystem are what the system calls would say."""
    import tempfile
    from collections import namedtuple

    from hpc.context import check_experiments_dir
    from hpc.errors import LaunchError

    def refuse(**kwargs):
        raise PermissionError(13, "Permission denied")

    with monkeypatch.context() as m:
        m.setattr(tempfile, "mkdtemp", refuse)
        with pytest.raises(LaunchError, match=rf"experiments dir {tmp_path}/exp: cannot create anything in {tmp_path} "
                                              r"\(Permission denied\); pass --experiments_dir DIR"):
            check_experiments_dir(tmp_path / "exp")
    full = namedtuple("statvfs", "f_bavail f_frsize")(0, 4096)
    monkeypatch.setattr(os, "statvfs", lambda path: full)
    with pytest.raises(LaunchError, match=rf"the filesystem of {tmp_path} is full; free space or pass --experiments_dir"):
        check_experiments_dir(tmp_path / "exp")
    assert list(tmp_path.iterdir()) == []  # the probe left nothing behind
