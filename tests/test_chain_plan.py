"""Train -> consolidate -> eval as one plan: edges, resources, requeue settings, refusals. Pure."""

import json

import pytest

from helpers import materialized, planned_manifest, script
from hpc import ROOT
from hpc.backends.slurm.commands import sbatch_argv
from hpc.errors import LaunchError
from hpc.jobs import consolidate, train
from hpc.options import LaunchOptions


def _opts(train_yaml, tmp_path, **kw) -> LaunchOptions:
    """Train with ZeRO-3 (the shipped DeepSpeed config) so that --consolidate applies."""
    base = dict(cluster="local", train_config_path=str(train_yaml), experiments_dir=str(tmp_path / "exp"),
                job_name="chain", deepspeed=str(ROOT / "examples/train/ds_z3.json"))
    return LaunchOptions(**{**base, **kw})


def _zero_checkpoint(root):
    ckpt = root / "out" / "checkpoint-4"
    (ckpt / "global_step4").mkdir(parents=True)
    (ckpt / "global_step4" / "zero_pp_rank_0_mp_rank_00_model_states.pt").write_bytes(b"x")
    (ckpt / "latest").write_text("global_step4")
    return root / "out"


def test_train_consolidate_eval_is_a_chain_of_afterok(train_yaml, tmp_path):
    plan = train.build_plan(_opts(train_yaml, tmp_path, consolidate=True, eval_tasks="build/tiny/data/tiny_eval.json"))
    assert [j.key for j in plan.jobs] == ["train", "consolidate", "eval"]
    assert [j.name for j in plan.jobs] == ["chain", "chain_consolidate", "chain_eval"]
    record = planned_manifest(plan)
    assert [r["dependencies"] for r in record["jobs"]] == [
        [], [{"kind": "afterok", "job": "train"}], [{"kind": "afterok", "job": "consolidate"}]]
    ids = {"train": "10", "consolidate": "11"}
    scripts = materialized(plan).scripts
    argvs = [sbatch_argv(plan.experiment_dir / scripts[j.key], j.dependencies, ids) for j in plan.jobs]
    assert [a[2] if len(a) == 4 else None for a in argvs] == [None, "--dependency=afterok:10", "--dependency=afterok:11"]
    output_dir = "/tmp/hpc-launch/checkpoints/chain"
    consolidate_script = script(plan, "consolidate")
    assert f"--input {output_dir} --output {output_dir}-consolidated --dtype fp32" in consolidate_script
    eval_script = script(plan, "eval")
    assert f"--model {output_dir}-consolidated" in eval_script  # eval reads what consolidate wrote
    assert f"--output {plan.experiment_dir}/eval/results.json" in eval_script
    assert "sbatch/consolidate.py" in plan.files and "sbatch/lf_train.py" in plan.files


def test_eval_right_after_train_reads_the_train_output(train_yaml, tmp_path):
    plan = train.build_plan(_opts(train_yaml, tmp_path, eval_tasks="data.json"))
    assert [j.key for j in plan.jobs] == ["train", "eval"]
    assert plan.job("eval").dependencies[0].job == "train"
    assert "--model /tmp/hpc-launch/checkpoints/chain " in script(plan, "eval")


def test_user_dependency_applies_to_the_first_job_only(train_yaml, tmp_path):
    plan = train.build_plan(_opts(train_yaml, tmp_path, consolidate=True, dependency="afterany:77"))
    assert [(d.kind, d.external, d.job) for d in plan.job("train").dependencies] == [("afterany", "77", None)]
    assert [(d.kind, d.job) for d in plan.job("consolidate").dependencies] == [("afterok", "train")]


def test_requeue_and_signal_only_for_train(train_yaml, tmp_path):
    plan = train.build_plan(_opts(train_yaml, tmp_path, consolidate=True, eval_tasks="d.json"))
    train_script = script(plan, "train")
    assert "#SBATCH --requeue\n" in train_script and "#SBATCH --signal=B:USR1@120\n" in train_script
    assert "max_restarts=3\n" in train_script
    for key in ("consolidate", "eval"):
        assert "#SBATCH --no-requeue\n" in script(plan, key) and "--signal" not in script(plan, key)
    no_restarts = script(train.build_plan(_opts(train_yaml, tmp_path, max_restarts=0)), "train")
    assert "#SBATCH --no-requeue\n" in no_restarts and "max_restarts=0\n" in no_restarts
    for job in plan.jobs:
        text = script(plan, job.key)
        assert "#SBATCH --kill-on-invalid-dep=yes\n" in text and "#SBATCH --open-mode=append\n" in text


def test_consolidate_takes_a_whole_node_without_gpus(train_yaml, tmp_path):
    text = script(train.build_plan(_opts(train_yaml, tmp_path, consolidate=True, gpus_per_node=1)), "consolidate")
    assert "--gres" not in text and "#SBATCH --cpus-per-task=4\n" in text and "#SBATCH --mem=7500M\n" in text


def test_standalone_consolidate_of_a_local_checkpoint(tmp_path):
    out = _zero_checkpoint(tmp_path)
    plan = consolidate.build_plan(LaunchOptions(job_type="consolidate", cluster="local", consolidate_input=str(out),
                                                consolidate_output_dir=str(tmp_path / "merged"), dtype="bf16",
                                                experiments_dir=str(tmp_path / "exp"), job_name="c1"))
    assert [j.key for j in plan.jobs] == ["consolidate"]
    assert f"--input {out} --output {tmp_path}/merged --dtype bf16" in script(plan, plan.jobs[0].key)


@pytest.mark.parametrize(
    "kw, message",
    [
        ({}, "--job_type consolidate needs --consolidate_input"),
        ({"consolidate_input": "/nonexistent/ckpt"}, "--consolidate_input: "),
        ({"consolidate_input": "not a repo!"}, "is neither an existing path nor a Hugging Face repo id"),
    ],
)
def test_bad_consolidate_input(tmp_path, kw, message):
    opts = LaunchOptions(**{"job_type": "consolidate", "cluster": "local", "experiments_dir": str(tmp_path), **kw})
    with pytest.raises(LaunchError, match=message):
        consolidate.build_plan(opts)


def test_plain_model_dir_is_not_a_zero_checkpoint(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({}))
    opts = LaunchOptions(job_type="consolidate", cluster="local", consolidate_input=str(model),
                         experiments_dir=str(tmp_path / "exp"))
    with pytest.raises(LaunchError, match=f"--consolidate_input: .*{model}"):
        consolidate.build_plan(opts)


def test_non_empty_output_needs_overwrite(train_yaml, tmp_path):
    merged = tmp_path / "merged"
    merged.mkdir()
    (merged / "mine.txt").write_text("keep me")
    with pytest.raises(LaunchError, match=f"consolidate output {merged} is not empty; .* or pass --overwrite"):
        train.build_plan(_opts(train_yaml, tmp_path, consolidate=True, consolidate_output_dir=str(merged)))
    plan = train.build_plan(_opts(train_yaml, tmp_path, consolidate=True, consolidate_output_dir=str(merged),
                                  overwrite=True))
    assert "--overwrite" in script(plan, "consolidate")


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"consolidate_output_repo": "org/x"}, "consolidate options were given without --consolidate"),
        ({"consolidate": True, "consolidate_output_repo": "bad repo"}, "is not a Hugging Face repo id"),
        ({"eval_tasks": "d.json", "eval_include_path": "."}, "is for the built-in lm_eval harness, but the local profile"),
        ({"max_restarts": -1}, "--max_restarts must be 0 or more"),
        ({"consolidate": True, "deepspeed": None}, "the train config has no 'deepspeed' key"),
        ({"time_limit": "00:03:00"}, "leaves no time to train: local warns 120 s before the limit"),
        ({"eval_tasks": "d.json", "eval_num_nodes": 0}, "--num_nodes must be at least 1"),
    ],
)
def test_bad_chain_options(train_yaml, tmp_path, kw, message):
    with pytest.raises(LaunchError, match=message):
        train.build_plan(_opts(train_yaml, tmp_path, **kw))


def test_eval_without_a_model_to_evaluate(tmp_path):
    path = tmp_path / "predict.yaml"
    path.write_text("model_name_or_path: m\ndataset: d\ndo_train: false\ndo_predict: true\n")
    with pytest.raises(LaunchError, match="--eval_tasks needs a model to evaluate, but the train job produces none"):
        train.build_plan(_opts(path, tmp_path, eval_tasks="d.json"))


def test_offline_upload_is_deferred_to_hpc_sync(train_yaml, tmp_path, capsys):
    plan = train.build_plan(_opts(train_yaml, tmp_path, consolidate=True, consolidate_output_repo="org/x"))
    deferred = json.loads(plan.files["configs/deferred.json"])
    assert deferred == {"uploads": [{"folder": "/tmp/hpc-launch/checkpoints/chain-consolidated", "repo": "org/x",
                                     "private": True, "ignore": [".consolidate-*"]}]}
    assert "--output_repo" not in script(plan, "consolidate")  # the compute node never tries
    assert [j.key for j in plan.jobs] == ["train", "consolidate"]
    assert any(f"python -m hpc.sync {plan.experiment_dir}" in note for note in plan.notes)
    assert "sbatch/sync.py" in plan.files


def test_deferred_uploads_become_a_sync_job_on_an_internet_partition(train_yaml, tmp_path, user_profiles):
    user_profiles("withnet", internet_partition="cpu")
    plan = train.build_plan(_opts(train_yaml, tmp_path, cluster="withnet", consolidate=True,
                                  consolidate_output_repo="org/x", eval_tasks="d.json"))
    assert [j.key for j in plan.jobs] == ["train", "consolidate", "eval", "sync"]
    sync = plan.job("sync")
    assert [(d.kind, d.job) for d in sync.dependencies] == [("afterok", "eval")]
    sync_script = script(plan, "sync")
    assert "#SBATCH --partition=cpu\n" in sync_script and "HF_HUB_OFFLINE" not in sync_script
    assert f"sbatch/sync.py {plan.experiment_dir}" in sync_script
    assert "HF_HUB_OFFLINE=1" in script(plan, "train")


def test_offline_hub_input_is_prefetched_and_a_dry_run_fetches_nothing(tmp_path, capsys):
    opts = LaunchOptions(job_type="consolidate", cluster="jureca", account="proj", consolidate_input="org/model@v1",
                         dry_run=True,
                         experiments_dir=str(tmp_path / "exp"), consolidate_output_dir=str(tmp_path / "m"))
    plan = consolidate.build_plan(opts)
    assert "would fetch model org/model (--consolidate_input)" in capsys.readouterr().out
    assert "--input '<model:org/model>'" in script(plan, plan.jobs[0].key)
