"""The datagen plan: jobs and edges, one array for all chunks, splitting, retries, refusals. Pure."""

import json
import subprocess

import pytest
import yaml

from helpers import materialized, planned_manifest, script
from hpc.backends import Limits
from hpc.backends.slurm.commands import sbatch_argv
from hpc.backends.slurm.script import shell_words
from hpc.errors import LaunchError
from hpc.jobs.datagen import build_plan
from hpc.jobside.datagen import chunk_bounds, task_list
from hpc.jobside.sync import expand
from hpc.options import LaunchOptions

SERVER = ["python", "{hpc_root}/examples/datagen/serve_tiny.py", "--model", "{model}", "--port", "{port}"]


@pytest.fixture
def setup(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "gen.py").write_text("print('generator')\n")
    config = {"engine": "vllm_local", "model": "build/tiny/model", "server": {"command": SERVER, "gpus": 1},
              "chunk_size": 4, "chunk_parallelism": 2}
    (tmp_path / "dg.yaml").write_text(yaml.safe_dump(config))
    tasks = tmp_path / "tasks"
    for i in range(10):
        (tasks / f"task_{i:04d}").mkdir(parents=True)
    return tmp_path


def _opts(tmp_path, cluster="local", **datagen) -> LaunchOptions:
    base = dict(datagen_config="dg.yaml", datagen_script="gen.py", enable_trace_gen=True,
                trace_target_repo="org/traces", num_chunks=5)
    return LaunchOptions(job_type="datagen", cluster=cluster, experiments_dir=str(tmp_path / "exp"), job_name="dg",
                         **{**base, **datagen})


def test_server_tasks_array_and_cleanup(setup, user_profiles):
    user_profiles("online", internet=True)
    plan = build_plan(_opts(setup, cluster="online"))
    assert [j.key for j in plan.jobs] == ["server", "tasks", "traces", "cleanup"]
    record = planned_manifest(plan)["jobs"]
    assert record[1]["dependencies"] == [{"kind": "after", "job": "server"}]
    assert record[2]["dependencies"] == [{"kind": "afterok", "job": "tasks"}, {"kind": "after", "job": "server"}]
    assert record[3]["dependencies"] == [{"kind": "afterany", "job": "tasks"}, {"kind": "afterany", "job": "traces"}]
    traces = plan.job("traces")
    m = materialized(plan)
    assert m.arrays["traces"] == "0-4%2" and record[2]["array"] == "0-4%2"
    argv = sbatch_argv(plan.experiment_dir / m.scripts["traces"], traces.dependencies, {"tasks": "7", "server": "6"},
                       m.arrays["traces"])
    assert argv[:4] == ["sbatch", "--parsable", "--array=0-4%2", "--dependency=afterok:7,after:6"]
    traces_script = script(plan, "traces")
    assert '--target-repo org/traces"-chunk${chunk_id}"' in traces_script
    assert "--num-chunks 5" in traces_script and "%x_%A_%a.out" in traces_script
    assert '--tasks-input "$chunk_dir"' in traces_script and '--endpoint-json' in traces_script
    cleanup = script(plan, "cleanup")
    assert '"$HPC_EXPERIMENT_DIR/manifest.json" server)' in cleanup and "scancel $ids" in cleanup
    assert "--name" not in cleanup  # by job id, never by name (other launches share names)
    assert '--port "$port"' in script(plan, "server")
    for job in plan.jobs:
        assert subprocess.run(["bash", "-n"], input=script(plan, job.key), text=True).returncode == 0, job.key


def test_thousand_chunks_are_one_array(setup):
    plan = build_plan(_opts(setup, num_chunks=1000, chunk_parallelism=8))
    traces = [j for j in plan.jobs if j.job_type == "traces"]
    assert len(traces) == 1 and materialized(plan).arrays[traces[0].key] == "0-999%8"


def test_above_max_array_size_several_arrays_run_one_after_another(setup):
    plan = build_plan(_opts(setup, num_chunks=1000), limits=lambda: Limits(max_array_size=401))
    traces = [j for j in plan.jobs if j.job_type == "traces"]
    arrays = materialized(plan).arrays
    assert [arrays[j.key] for j in traces] == ["0-399%2", "0-399%2", "0-199%2"]
    assert [("chunk=$((" + str(o)) in script(plan, j.key) for j, o in zip(traces, (0, 400, 800))] == [True] * 3
    assert traces[1].dependencies[0].job == "traces_0" and traces[2].dependencies[0].kind == "afterany"


def test_existing_tasks_make_chunks_at_launch(setup):
    plan = build_plan(_opts(setup, enable_task_gen=False, trace_input_path="tasks", num_chunks=None,
                            datagen_script=None, trace_script="gen.py"))
    assert [j.key for j in plan.jobs] == ["server", "traces", "cleanup"]
    assert materialized(plan).arrays["traces"] == "0-2%2"  # 10 tasks, 4 per chunk
    assert json.loads(plan.files["configs/datagen.json"])["num_chunks"] == 3


def test_offline_cluster_defers_uploads_per_chunk(setup):
    plan = build_plan(_opts(setup, datagen_target_repo="org/tasks"))
    assert "--target-repo" not in script(plan, "traces") and "--target-repo" not in script(plan, "tasks")
    recorded = json.loads(plan.files["configs/deferred.json"])["uploads"]
    assert recorded[1] == {"folder": f"{setup}/exp/dg/outputs/traces/chunk_{{index:03d}}",
                           "repo": "org/traces-chunk{index:03d}", "indices": "0-4", "repo_type": "dataset",
                           "private": True}  # one pattern for all chunks
    uploads = [u for item in recorded for u in expand(item)]
    assert [u["repo"] for u in uploads] == ["org/tasks"] + [f"org/traces-chunk{i:03d}" for i in range(5)]
    assert uploads[-1]["folder"] == f"{setup}/exp/dg/outputs/traces/chunk_004"
    assert {u["repo_type"] for u in uploads} == {"dataset"}
    assert any("python -m hpc.sync" in n for n in plan.notes)


def test_ten_thousand_chunks_plan_as_small_as_ten(setup):
    sizes = {}
    for n in (10, 10_000):
        plan = build_plan(_opts(setup, num_chunks=n, trace_output_dir="{odd}/traces"))
        uploads = json.loads(plan.files["configs/deferred.json"])["uploads"]
        assert len(uploads) == 1 and len(expand(uploads[0])) == n
        assert expand(uploads[0])[-1]["folder"] == f"{setup}/{{odd}}/traces/chunk_{n - 1:03d}"  # braces kept as they are
        sizes[n] = sum(len(text) for text in plan.files.values())
    assert sizes[10_000] - sizes[10] < 100  # the digits of the counts, not a record per chunk


def test_arrays_record_which_chunk_their_task_0_is(setup):
    plan = build_plan(_opts(setup, num_chunks=1000), limits=lambda: Limits(max_array_size=401))
    assert [j.array.first for j in plan.jobs if j.array] == [0, 400, 800]
    assert [r["array_first"] for r in planned_manifest(plan)["jobs"] if r["array"]] == [0, 400, 800]


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"chunk_size": 0, "num_chunks": None, "enable_task_gen": False, "trace_input_path": "tasks"},
         "--chunk_size must be at least 1"),
        ({"trace_target_repo": None}, "trace generation needs --trace_target_repo"),
        ({"trace_agent_kwargs": "{not json"}, "--trace_agent_kwargs is not a JSON object"),
        ({"trace_agent_kwargs": "[1, 2]"}, "--trace_agent_kwargs is not a JSON object"),
        ({"enable_task_gen": False, "trace_input_path": "nope"}, "--trace_input_path nope does not exist"),
        ({"num_chunks": None}, "needs --num_chunks N"),
        ({"datagen_script": "missing.py"}, "--datagen_script missing.py: no such file"),
        ({"datagen_config": "nope.yaml"}, "datagen config 'nope.yaml' not found"),
        ({"enable_task_gen": False, "enable_trace_gen": False}, "nothing to do"),
    ],
)
def test_bad_input(setup, changes, message):
    with pytest.raises(LaunchError, match=message):
        build_plan(_opts(setup, **changes))


def test_unknown_engine(setup):
    (setup / "bad.yaml").write_text(yaml.safe_dump({"engine": "gpt5", "model": "m"}))
    with pytest.raises(LaunchError, match="unknown engine 'gpt5'; use one of openai, anthropic, vllm_local, gemini_openai, "
                       "google_gemini, none"):
        build_plan(_opts(setup, datagen_config="bad.yaml"))


def test_shell_words_put_the_runtime_port_in_place():
    assert shell_words(["serve", "{port}".replace("{port}", "\0PORT\0"), "--bind=0:\0PORT\0", "a b", ""]) == \
        """serve "$port" --bind=0:"$port" 'a b' ''"""


def test_chunks_cover_every_task_once(tmp_path):
    for name in ("b", "a", ".hidden", "c"):
        (tmp_path / name).mkdir()
    assert [p.name for p in task_list(tmp_path)] == ["a", "b", "c"]
    for n, k in ((10, 3), (3, 5), (1000, 7)):
        covered = [i for c in range(k) for i in range(*chunk_bounds(n, c, k))]
        assert covered == list(range(n))
