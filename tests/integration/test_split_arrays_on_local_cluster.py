"""A datagen launch larger than the controller's MaxArraySize, for real: the local cluster runs with MaxArraySize=10
for this module (scripts/local_slurm.sh restarts its daemons with it, and with the default afterwards), so 25 chunks
become three arrays, each after the one before; a retry is refused while they run, and afterwards reruns only the
chunk without a done marker, in its own array at its own offset."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest
import yaml

from hpc import ROOT

from helpers import log_text, manifest, run_cli
from test_datagen_on_local_cluster import online  # noqa: F401  (a fixture)

pytestmark = pytest.mark.slurm


def _max_array_size() -> str:
    out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, check=True).stdout
    return next(line.split("=", 1)[1].strip() for line in out.splitlines() if line.startswith("MaxArraySize"))


def _cluster_up(max_array_size: int | None) -> None:
    env = {**os.environ, **({"LOCAL_SLURM_MAX_ARRAY_SIZE": str(max_array_size)} if max_array_size else {})}
    subprocess.run(["bash", str(ROOT / "scripts" / "local_slurm.sh"), "up"], env=env, check=True,
                   capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def small_arrays(cluster) -> Iterator[None]:
    """MaxArraySize=10 on the local controller while this module runs; the default again afterwards."""
    _cluster_up(10)
    try:
        assert _max_array_size() == "10"
        yield
    finally:
        _cluster_up(None)
        assert _max_array_size() == "1001"


GENERATOR = """import pathlib, sys
args = sys.argv
tasks = sorted(p.name for p in pathlib.Path(args[args.index("--tasks-input") + 1]).iterdir())
if "t20" in tasks and not pathlib.Path({fixed!r}).exists():
    sys.exit("flaky: t20 is broken")
out = pathlib.Path(args[args.index("--output-dir") + 1])
out.mkdir(parents=True, exist_ok=True)
for t in tasks:
    (out / (t + ".json")).write_text("{{}}")
"""


def test_25_chunks_are_three_arrays_and_retry_reruns_one_chunk_at_its_offset(small_arrays, launch, tmp_path, online):
    args, env = online
    tasks = tmp_path / "tasks"
    for i in range(25):
        (tasks / f"t{i:02d}").mkdir(parents=True)
    script, fixed = tmp_path / "flaky.py", tmp_path / "fixed_t20"
    script.write_text(GENERATOR.format(fixed=str(fixed)))
    (tmp_path / "one.yaml").write_text(yaml.safe_dump({"engine": "none", "model": "none", "chunk_size": 1,
                                                        "chunk_parallelism": 4}))
    first = launch(*args, "--job_type", "datagen", "--datagen_config", str(tmp_path / "one.yaml"),
                   "--no-enable_task_gen", "--enable_trace_gen", "--trace_script", str(script),
                   "--trace_input_path", str(tasks), "--trace_target_repo", "org/split", "--job_name", "split",
                   extra_env=env)
    exp = tmp_path / "exp" / "split"
    assert first.returncode == 0, first.stdout + first.stderr
    early = run_cli("retry", str(exp), env=env)  # 25 chunks take longer than this: the arrays are queued or running
    assert early.returncode == 2 and "still queued or running" in early.stderr, early.stdout + early.stderr
    followed = run_cli("status", str(exp), "--wait", env=env)
    assert followed.returncode == 1, followed.stdout + followed.stderr + log_text(exp)
    jobs = {j["key"]: j for j in manifest(exp)["jobs"]}
    traces = [jobs[f"traces_{n}"] for n in range(3)]
    assert [j["array"] for j in traces] == ["0-8%4", "0-8%4", "0-6%4"]
    assert [j["submit_argv"][2] for j in traces] == ["--array=0-8%4", "--array=0-8%4", "--array=0-6%4"]
    assert [j["state"] for j in traces] == ["COMPLETED", "COMPLETED", "FAILED"], log_text(exp)
    assert [j["elapsed"] for j in traces] == ["9/9 tasks COMPLETED", "9/9 tasks COMPLETED",
                                               "6/7 tasks COMPLETED"]
    done = sorted(p.name for p in (exp / "chunks").glob("*.done"))
    assert done == [f"chunk_{i:03d}.done" for i in range(25) if i != 20]

    fixed.touch()
    again = run_cli("retry", str(exp), "--wait", env=env)
    assert again.returncode == 0, again.stdout + again.stderr + log_text(exp)
    jobs = {j["key"]: j for j in manifest(exp)["jobs"]}
    assert [len(jobs[f"traces_{n}"].get("history") or []) for n in range(3)] == [0, 0, 1]  # only the failed array
    assert jobs["traces_2"]["array"] == "2%4" and jobs["traces_2"]["state"] == "COMPLETED"
    outputs = sorted(p.name for p in (exp / "outputs" / "traces").rglob("*.json"))
    assert outputs == [f"t{i:02d}.json" for i in range(25)]
