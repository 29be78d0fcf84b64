"""Eval plans: the built-in lm_eval harness (HF on CPU, vLLM on GPUs), a profile's eval_command, --job_type eval.

Pure, except the last tests: a real prefetch from a loopback Hub, and the job's lm_eval step run with a stand-in.
"""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest

from helpers import script
from hpc import ROOT
from hpc.errors import LaunchError
from hpc.jobs import JOB_TYPES, evaluate, train
from hpc.launch import main
from hpc.options import LaunchOptions

TASKS_DIR = ROOT / "examples" / "eval" / "tasks"


@pytest.fixture
def lm(user_profiles):
    """A profile like local but without an eval_command: the built-in harness."""
    user_profiles("lm", eval_command=None)


@pytest.fixture
def model(tmp_path):
    path = tmp_path / "my-model"
    path.mkdir()
    (path / "config.json").write_text("{}")
    return path


def _eval(tmp_path, **kw):
    base = dict(job_type="eval", cluster="lm", eval_tasks="tiny_qa,tiny_ppl", experiments_dir=str(tmp_path / "exp"))
    return evaluate.build_plan(LaunchOptions(**{**base, **kw}))


def _model_args(text: str) -> dict:
    return json.loads(re.search(r"--model_args '(\{.*?\})'", text).group(1))


def test_cpu_job_runs_lm_eval_with_the_hf_backend(lm, model, tmp_path):
    plan = _eval(tmp_path, eval_model=str(model), gpus_per_node=0, eval_include_path=str(TASKS_DIR))
    assert [j.key for j in plan.jobs] == ["eval"] and plan.jobs[0].dependencies == ()
    assert re.fullmatch(r"my-model_eval_\d{8}-\d{6}", plan.jobs[0].name)
    text = script(plan, "eval")
    exp = plan.experiment_dir
    assert (f"lm_eval --model hf --model_args '{{\"pretrained\":\"{model}\",\"dtype\":\"float32\"}}' --tasks "
            f"tiny_qa,tiny_ppl --device cpu --batch_size 8 --include_path {TASKS_DIR} --output_path {exp}/eval\n"
            ) in text
    assert "--gres" not in text and "--no-requeue" in text and "HF_HUB_OFFLINE=1" in text
    assert f"mkdir -p {exp}/eval\n" in text
    assert "configs/launch.yaml" in plan.files  # hpc.pipeline.finish


def test_gpu_job_runs_vllm_with_tensor_parallelism_over_its_gpus(lm, model, tmp_path):
    text = script(_eval(tmp_path, eval_model=str(model), gpus_per_node=2), "eval")
    assert "#SBATCH --gres=gpu:2\n" in text
    assert "lm_eval --model vllm --model_args " in text and "--batch_size auto --output_path" in text
    assert _model_args(text) == {"pretrained": str(model), "tensor_parallel_size": 2, "gpu_memory_utilization": 0.9}
    assert "--device" not in text


def test_extra_args_go_last_and_model_args_merge(lm, model, tmp_path):
    extra = "--limit 10 --model_args 'max_model_len=4096'"
    text = script(_eval(tmp_path, eval_model=str(model), eval_extra_args=extra), "eval")
    assert text.split("lm_eval --model vllm", 1)[1].rstrip().endswith(
        "/eval --limit 10 --model_args max_model_len=4096\necho \"[hpc-launch] eval: finished\"")


def test_chained_eval_reads_the_train_output_and_can_run_on_cpu(lm, train_yaml, tmp_path):
    opts = LaunchOptions(cluster="lm", train_config_path=str(train_yaml), experiments_dir=str(tmp_path / "exp"),
                         job_name="chain", gpus_per_node=1, eval_tasks="tiny_qa", eval_gpus_per_node=0,
                         eval_time_limit="00:20:00")
    plan = train.build_plan(opts)
    assert [j.key for j in plan.jobs] == ["train", "eval"]
    assert plan.job("eval").name == "chain_eval" and plan.job("eval").dependencies[0].job == "train"
    assert plan.job("train").resources.gpus_per_node == 1 and plan.job("eval").resources.gpus_per_node == 0
    text = script(plan, "eval")
    assert _model_args(text)["pretrained"] == "/tmp/hpc-launch/checkpoints/chain" and "--model hf" in text
    assert "#SBATCH --time=00:20:00\n" in text


def test_a_profile_eval_command_overrides_the_built_in_harness(model, tmp_path):
    plan = _eval(tmp_path, cluster="local", eval_model=str(model), eval_tasks="heldout.json", job_name="ppl")
    text = script(plan, "eval")
    assert (f"python {ROOT}/examples/eval/eval_ppl.py --model {model} --data heldout.json --output "
            f"{plan.experiment_dir}/eval/results.json\n") in text
    assert "lm_eval" not in text and plan.jobs[0].name == "ppl"


def test_offline_hub_model_is_prefetched_and_a_dry_run_fetches_nothing(lm, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HPC_LAUNCH_SCRATCH", str(tmp_path / "scratch"))
    plan = _eval(tmp_path, eval_model="org/tiny-model@v1", dry_run=True)
    assert "would fetch model org/tiny-model (--eval_model)" in capsys.readouterr().out
    assert _model_args(script(plan, "eval"))["pretrained"] == "<model:org/tiny-model>"
    assert re.fullmatch(r"tiny-model_eval_\d{8}-\d{6}", plan.jobs[0].name)
    assert not (tmp_path / "scratch").exists()


def test_an_offline_eval_command_gets_the_prefetched_revision(tmp_path, capsys):
    text = script(_eval(tmp_path, cluster="local", eval_model="org/m@v1", dry_run=True), "eval")
    assert "eval_ppl.py --model '<model:org/m>' --data" in text


def test_online_hub_model_is_left_to_the_job_with_its_revision(user_profiles, tmp_path, capsys):
    user_profiles("lmnet", eval_command=None, internet=True)
    text = script(_eval(tmp_path, cluster="lmnet", eval_model="org/tiny-model@v1", gpus_per_node=0), "eval")
    assert _model_args(text) == {"pretrained": "org/tiny-model", "revision": "v1", "dtype": "float32"}
    assert "prefetch" not in capsys.readouterr().out and "HF_HUB_OFFLINE" not in text


def test_offline_hub_model_is_really_prefetched(lm, tmp_path, fake_hub, monkeypatch):
    fake_hub.add_repo("org/tiny-model", {"config.json": b"{}"})
    monkeypatch.setenv("HPC_LAUNCH_SCRATCH", str(tmp_path / "scratch"))
    dotenv = tmp_path / "hub.env"
    dotenv.write_text((ROOT / "dotenv" / "local.env").read_text() + f"HF_ENDPOINT={fake_hub.url}\n")
    text = script(_eval(tmp_path, eval_model="org/tiny-model", dotenv=str(dotenv)), "eval")
    snapshot = _model_args(text)["pretrained"]
    assert snapshot.startswith(str(tmp_path / "scratch" / "hf_home" / "hub"))
    assert os.path.isfile(f"{snapshot}/config.json")


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"eval_model": None}, "--job_type eval needs --eval_model"),
        ({"eval_tasks": None}, "--job_type eval needs --eval_tasks"),
        ({"eval_model": "build/no/such-model"}, "--eval_model build/no/such-model: no model directory there"),
        ({"eval_model": "."}, "--eval_model .: no model directory there \\(no config.json\\)"),
        ({"eval_tasks": "tiny_qa,,tiny_ppl"}, "has an empty task name"),
        ({"eval_num_nodes": 2}, "the built-in lm_eval harness runs on one node"),
        ({"eval_include_path": "no/such/dir"}, "--eval_include_path no/such/dir: no such directory"),
        ({"eval_extra_args": "--limit 'x"}, "--eval_extra_args is not valid shell quoting"),
        ({"cluster": "local", "eval_include_path": "."}, "is for the built-in lm_eval harness, but the local profile"),
    ],
)
def test_bad_eval_options(lm, model, tmp_path, kw, message):
    with pytest.raises(LaunchError, match=message):
        _eval(tmp_path, **{"eval_model": str(model), **kw})


def test_bad_options_are_refused_before_anything_is_downloaded(lm, tmp_path):
    dotenv = tmp_path / "dead.env"
    dotenv.write_text((ROOT / "dotenv" / "local.env").read_text() + "HF_ENDPOINT=http://127.0.0.1:9\n")
    with pytest.raises(LaunchError, match="the built-in lm_eval harness runs on one node"):
        _eval(tmp_path, eval_model="org/never-fetched", eval_num_nodes=2, dotenv=str(dotenv))


def test_a_revision_the_eval_command_cannot_take_is_refused(user_profiles, tmp_path):
    user_profiles("pplnet", internet=True)
    with pytest.raises(LaunchError, match="takes a model without a revision; add --prefetch"):
        _eval(tmp_path, cluster="pplnet", eval_model="org/m@v1")


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"eval_model": "m", "eval_tasks": "tiny_qa"}, "--eval_model is for --job_type eval"),
        ({"eval_include_path": "."}, "--eval_include_path was given without --eval_tasks"),
        ({"eval_gpus_per_node": 0}, "--eval_gpus_per_node was given without --eval_tasks"),
    ],
)
def test_eval_options_that_do_not_fit_a_chain(lm, train_yaml, tmp_path, kw, message):
    opts = LaunchOptions(cluster="lm", train_config_path=str(train_yaml), experiments_dir=str(tmp_path / "exp"), **kw)
    with pytest.raises(LaunchError, match=message):
        train.build_plan(opts)


def test_the_cli_knows_the_eval_job_type(lm, model, tmp_path, capsys):
    assert JOB_TYPES["eval"].module == "hpc.jobs.evaluate"
    code = main(["--job_type", "eval", "--cluster", "lm", "--eval_model", str(model), "--eval_tasks", "tiny_qa",
                 "--experiments_dir", str(tmp_path / "exp"), "--job_name", "cli", "--dry_run"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert (tmp_path / "exp" / "cli" / "sbatch" / "eval.sbatch").is_file() and "--- eval: sbatch" in out.out


def _run_lm_eval_step(tmp_path, stand_in: str) -> subprocess.CompletedProcess:
    """The job's `bash -c LM_EVAL_SH lm_eval ...` with a stand-in lm_eval first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "lm_eval").write_text("#!/bin/bash\n" + stand_in)
    (bin_dir / "lm_eval").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "HPC_EXPERIMENT_DIR": str(tmp_path)}
    return subprocess.run(["bash", "-c", evaluate.LM_EVAL_SH, "lm_eval", "--tasks", "a b"], env=env,
                          capture_output=True, text=True)


def test_the_newest_results_file_becomes_results_json(tmp_path):
    stand_in = ('out="$HPC_EXPERIMENT_DIR/eval/__m"; mkdir -p "$out"; echo \'{"old": 1}\' > "$out/results_1.json"\n'
                'sleep 0.05; printf \'{"args": "%s|%s|%s"}\' "$@" > "$out/results_2.json"\n')
    proc = _run_lm_eval_step(tmp_path, stand_in)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "eval" / "results.json").read_text()) == {"args": "--tasks|a b|"}


def test_a_failed_lm_eval_fails_the_step_and_writes_no_results(tmp_path):
    proc = _run_lm_eval_step(tmp_path, "exit 3\n")
    assert proc.returncode == 3 and not (tmp_path / "eval" / "results.json").exists()
