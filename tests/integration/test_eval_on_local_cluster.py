"""The built-in lm_eval harness as real jobs on the local cluster: the tiny model on tasks shipped in the repo
(examples/eval/tasks: local data, no Hub), alone (--job_type eval) and chained after a real tiny train."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import yaml

from hpc import ROOT

from helpers import TINY_YAML, local_profile_data, log_text, manifest, run_cli, train_output

pytestmark = [pytest.mark.slurm, pytest.mark.ml]

TASKS_DIR = ROOT / "examples" / "eval" / "tasks"
TINY_MODEL = ROOT / "build" / "tiny" / "model"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, cluster, tiny_model) -> dict[str, tuple[Path, int]]:
    """Three launches on a local profile without eval_command, submitted together, then waited for:
    experiment dir and hpc.status exit code by name."""
    tmp = tmp_path_factory.mktemp("lm_eval")
    profiles = tmp / "profiles"
    profiles.mkdir()
    (profiles / "locallm.yaml").write_text(yaml.safe_dump(local_profile_data(name="locallm", eval_command=None)))
    env = {"HPC_VENV": sys.prefix, "HPC_LAUNCH_SCRATCH": str(tmp / "scratch"), "HPC_LAUNCH_PROFILES": str(profiles)}
    common = ["--cluster", "locallm", "--experiments_dir", str(tmp / "exp"), "--eval_include_path", str(TASKS_DIR)]
    launches = {
        "alone": ["--job_type", "eval", "--eval_model", "build/tiny/model", "--eval_tasks", "tiny_qa,tiny_ppl",
                  "--gpus_per_node", "0"],
        "chain": ["--train_config_path", str(TINY_YAML), "--gpus_per_node", "1", "--max_steps", "2",
                  "--eval_tasks", "tiny_qa,tiny_ppl", "--eval_gpus_per_node", "0"],
        "unknown": ["--job_type", "eval", "--eval_model", "build/tiny/model", "--eval_tasks", "no_such_task",
                    "--gpus_per_node", "0", "--partition", "cpu"],
    }
    for name, args in launches.items():
        result = run_cli(*common, *args, "--job_name", name, env=env)
        assert result.returncode == 0, result.stdout + result.stderr
    return {name: (tmp / "exp" / name, run_cli(str(tmp / "exp" / name), "--wait", module="hpc.status").returncode)
            for name in launches}


def _results(exp: Path) -> dict:
    return json.loads((exp / "eval" / "results.json").read_text())


def _check_scores(results: dict) -> None:
    assert 0 <= results["results"]["tiny_qa"]["acc,none"] <= 1
    assert math.isfinite(results["results"]["tiny_ppl"]["word_perplexity,none"])
    assert results["n-samples"]["tiny_qa"]["effective"] == 20


def test_eval_job_type_runs_lm_eval_on_the_tiny_model(runs):
    exp, code = runs["alone"]
    logs = log_text(exp)
    assert code == 0, logs
    assert [(j["key"], j["state"]) for j in manifest(exp)["jobs"]] == [("eval", "COMPLETED")]
    results = _results(exp)
    _check_scores(results)
    assert results["config"]["model_args"]["pretrained"] == str(TINY_MODEL)
    assert "running offline" in logs and "eval: results.json <- " in logs
    assert len(list((exp / "eval").glob("*/results_*.json"))) == 1  # lm_eval's own file stays beside it


def test_train_then_chained_lm_eval_on_the_trained_model(runs):
    exp, code = runs["chain"]
    logs = log_text(exp)
    assert code == 0, logs
    jobs = {j["key"]: j for j in manifest(exp)["jobs"]}
    assert {k: j["state"] for k, j in jobs.items()} == {"train": "COMPLETED", "eval": "COMPLETED"}
    assert jobs["eval"]["dependencies"] == [{"kind": "afterok", "job": "train"}]
    assert json.loads((train_output(exp) / "trainer_state.json").read_text())["global_step"] == 2
    results = _results(exp)
    _check_scores(results)
    assert results["config"]["model_args"]["pretrained"] == str(train_output(exp))


def test_an_unknown_task_fails_the_job_without_results(runs):
    exp, code = runs["unknown"]
    logs = log_text(exp)
    assert code == 1 and manifest(exp)["jobs"][0]["state"] == "FAILED", logs
    assert "no_such_task" in logs and not (exp / "eval" / "results.json").exists()
