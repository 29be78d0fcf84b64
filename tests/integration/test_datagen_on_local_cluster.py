"""Data generation as real jobs: a tiny model served on the local cluster, tasks, a throttled trace array,
uploads to the loopback hub; an upstream-format config with a generator written to upstream's contract only;
failures and a 1000-chunk array submitted with one sbatch."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from hpc import ROOT

from helpers import log_text, manifest, run_cli
from test_datagen_upstream import STRICT_GENERATOR

pytestmark = pytest.mark.slurm

GENERATOR = "examples/datagen/generate.py"


@pytest.fixture
def online(tmp_path, user_profiles, fake_hub):
    """An online copy of the local profile whose dotenv points the Hub clients at the fake hub."""
    user_profiles("online", internet=True)
    dotenv = tmp_path / "online.env"
    dotenv.write_text((ROOT / "dotenv" / "local.env").read_text() + f"HF_ENDPOINT={fake_hub.url}\n")
    secrets = tmp_path / "secrets.env"
    secrets.write_text("HF_TOKEN=hf_datagen_token\n")
    secrets.chmod(0o600)
    env = {"HPC_LAUNCH_PROFILES": str(tmp_path / "my_profiles"), "DC_AGENT_SECRET_ENV": str(secrets)}
    return ["--cluster", "online", "--dotenv", str(dotenv)], env


def jobs_by_key(exp: Path) -> dict[str, dict]:
    return {job["key"]: job for job in manifest(exp)["jobs"]}


def max_concurrency(array_id: str) -> int:
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobID,Start,End", "-j", array_id],
                         capture_output=True, text=True, check=True).stdout
    spans = [(datetime.fromisoformat(s), datetime.fromisoformat(e)) for _, s, e in
             (line.split("|") for line in out.splitlines() if line)]
    return max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)


def test_tasks_server_and_five_chunks_two_at_a_time(launch, tmp_path, online, fake_hub):
    args, env = online
    result = launch(*args, "--job_type", "datagen", "--datagen_config", "tiny_local", "--datagen_script", GENERATOR,
                    "--datagen_extra_args", "--num-tasks 10", "--enable_trace_gen", "--trace_target_repo",
                    "org/traces", "--num_chunks", "5", "--chunk_parallelism", "2", "--server_wait_timeout", "300",
                    "--job_name", "dg", "--wait", extra_env=env)
    exp = tmp_path / "exp" / "dg"
    assert result.returncode == 0, result.stdout + result.stderr + log_text(exp)
    jobs = jobs_by_key(exp)
    assert [jobs[k]["state"] for k in ("tasks", "traces", "cleanup")] == ["COMPLETED"] * 3
    assert jobs["server"]["state"] == "CANCELLED"  # by the cleanup job, once the work was done
    assert jobs["traces"]["array"] == "0-4%2" and jobs["traces"]["elapsed"] == "5/5 tasks COMPLETED"
    assert max_concurrency(jobs["traces"]["job_id"]) <= 2
    tasks = sorted(p.name for p in (exp / "outputs" / "tasks").iterdir())
    assert len(tasks) == 10
    for i in range(5):
        chunk = sorted((exp / "chunks" / f"chunk_{i:03d}").iterdir())
        assert [p.name for p in chunk] == tasks[2 * i:2 * i + 2]
        assert all(p.is_symlink() and p.resolve().parent == exp / "outputs" / "tasks" for p in chunk)  # no copies
        traces = sorted((exp / "outputs" / "traces" / f"chunk_{i:03d}").glob("*.json"))
        assert len(traces) == 2
        assert set(fake_hub.repo_files(f"org/traces-chunk{i:03d}", repo_type="dataset")) >= {p.name for p in traces}
    assert "inference server at http://127.0.0.1:" in log_text(exp)


def test_a_failed_task_job_stops_the_traces(launch, tmp_path, online):
    args, env = online
    result = launch(*args, "--job_type", "datagen", "--datagen_config", "tiny_local", "--datagen_script", GENERATOR,
                    "--datagen_extra_args", "--num-tasks 4 --fail", "--enable_trace_gen", "--trace_target_repo",
                    "org/t", "--num_chunks", "2", "--job_name", "dgfail", "--wait", extra_env=env)
    exp = tmp_path / "exp" / "dgfail"
    jobs = jobs_by_key(exp)
    assert result.returncode == 1
    assert jobs["tasks"]["state"] == "FAILED" and jobs["traces"]["state"] == "CANCELLED", log_text(exp)
    assert jobs["traces"]["reason"] == "not run: tasks ended FAILED"
    assert jobs["cleanup"]["state"] == "COMPLETED" and jobs["server"]["state"] == "CANCELLED"
    assert not (exp / "outputs" / "traces").exists()


def test_a_dead_server_fails_its_users_clearly_and_quickly(launch, tmp_path, online):
    args, env = online
    config = yaml.safe_load((ROOT / "examples" / "datagen" / "tiny_local.yaml").read_text())
    config["server"]["command"] = ["python", "-c", "import sys; print('server crashed'); sys.exit(3)"]
    (tmp_path / "dead.yaml").write_text(yaml.safe_dump(config))
    result = launch(*args, "--job_type", "datagen", "--datagen_config", str(tmp_path / "dead.yaml"),
                    "--datagen_script", GENERATOR, "--datagen_extra_args", "--num-tasks 2", "--job_name", "dgdead",
                    "--server_wait_timeout", "600", "--wait", extra_env=env)
    exp = tmp_path / "exp" / "dgdead"
    jobs = jobs_by_key(exp)
    logs = log_text(exp)
    assert result.returncode == 1
    assert jobs["server"]["state"] == "FAILED" and jobs["tasks"]["state"] == "FAILED", logs
    assert "the server process exited before" in logs
    assert "inference server job dgdead_server is" in logs and "without a healthy endpoint" in logs
    minutes, seconds = map(int, jobs["tasks"]["elapsed"].split(":")[-2:])
    assert minutes * 60 + seconds < 120  # not the 600 s timeout: the dead server is noticed at once


def test_thousand_chunks_are_submitted_with_one_sbatch(launch, tmp_path, online):
    args, env = online
    tasks = tmp_path / "tasks"
    for i in range(1000):
        (tasks / f"t{i:04d}").mkdir(parents=True)
    (tmp_path / "noop.yaml").write_text(yaml.safe_dump({"engine": "none", "model": "none", "chunk_size": 1,
                                                         "chunk_parallelism": 1}))
    result = launch(*args, "--job_type", "datagen", "--datagen_config", str(tmp_path / "noop.yaml"),
                    "--no-enable_task_gen", "--enable_trace_gen", "--trace_script", GENERATOR,
                    "--trace_input_path", str(tasks), "--trace_target_repo", "org/noop", "--job_name", "dg1000",
                    extra_env=env)
    assert result.returncode == 0, result.stderr
    jobs = manifest(tmp_path / "exp" / "dg1000")["jobs"]
    assert [(j["key"], j["array"]) for j in jobs] == [("traces", "0-999%1")]
    assert jobs[0]["submit_argv"][:3] == ["sbatch", "--parsable", "--array=0-999%1"]
    array_id = jobs[0]["job_id"]
    try:
        queued = subprocess.run(["squeue", "-h", "-r", "-j", array_id, "-o", "%i"], capture_output=True,
                                text=True, check=True).stdout.split()
        assert len(queued) >= 999 and all(q.startswith(f"{array_id}_") for q in queued)
    finally:
        subprocess.run(["scancel", array_id], check=False)


def test_retry_reruns_only_unfinished_chunks_across_attempts(launch, tmp_path, online):
    """A generator that fails on two tasks until each is fixed: each retry runs only the chunks still without
    a done marker, whichever attempt wrote the others."""
    args, env = online
    tasks = tmp_path / "tasks"
    for i in range(6):
        (tasks / f"t{i}").mkdir(parents=True)
    script = tmp_path / "flaky.py"
    script.write_text(f"""import pathlib, sys
args = sys.argv
tasks = sorted(p.name for p in pathlib.Path(args[args.index("--tasks-input") + 1]).iterdir())
for t in tasks:
    if t in ("t3", "t5") and not pathlib.Path({str(tmp_path)!r}, "fixed_" + t).exists():
        sys.exit("flaky: " + t + " is broken")
out = pathlib.Path(args[args.index("--output-dir") + 1])
out.mkdir(parents=True, exist_ok=True)
for t in tasks:
    (out / (t + ".json")).write_text("{{}}")
""")
    (tmp_path / "none.yaml").write_text(yaml.safe_dump({"engine": "none", "model": "none", "chunk_size": 2}))
    common = [*args, "--job_type", "datagen", "--datagen_config", str(tmp_path / "none.yaml"),
              "--no-enable_task_gen", "--enable_trace_gen", "--trace_script", str(script),
              "--trace_target_repo", "org/flaky", "--trace_input_path", str(tasks), "--wait"]
    first = launch(*common, "--job_name", "flaky", extra_env=env)
    exp = tmp_path / "exp" / "flaky"
    assert first.returncode == 1 and manifest(exp)["jobs"][0]["state"] == "FAILED", log_text(exp)
    assert sorted(p.name for p in (exp / "chunks").glob("*.done")) == ["chunk_000.done"]  # (t2, t3), (t4, t5) fail

    status = run_cli("status", str(exp))
    assert status.returncode == 1 and "1 COMPLETED, 2 FAILED" in status.stdout, status.stdout
    logs = run_cli("logs", str(exp))
    assert "first error: flaky: t3 is broken" in logs.stdout, logs.stdout

    (tmp_path / "fixed_t3").touch()
    second = run_cli("retry", str(exp), "--wait", env=env)
    assert second.returncode == 1, second.stdout + second.stderr  # chunk 2 still fails
    traces = manifest(exp)["jobs"][0]
    assert traces["array"] == "1-2%4" and traces["history"][0]["state"] == "FAILED"

    (tmp_path / "fixed_t5").touch()
    third = run_cli("retry", str(exp), "--wait", env=env)
    assert third.returncode == 0, third.stdout + third.stderr + log_text(exp)
    traces = manifest(exp)["jobs"][0]
    assert traces["array"] == "2%4" and len(traces["history"]) == 2 and manifest(exp)["attempts"] == 3
    outputs = sorted(p.name for p in (exp / "outputs" / "traces").rglob("*.json"))
    assert outputs == [f"t{i}.json" for i in range(6)]
    assert "nothing to retry" in run_cli("retry", str(exp)).stdout


# `vllm serve` on the local cluster: parses the flags the launcher writes for the vllm_server section below
# (unknown ones exit 2), records them, then serves the tiny model on the CPU under the served name.
VLLM_SHIM = """#!{python}
import argparse, json, os, sys
parser = argparse.ArgumentParser(prog="vllm", allow_abbrev=False)
serve = parser.add_subparsers(dest="command", required=True).add_parser("serve", allow_abbrev=False)
serve.add_argument("model")
serve.add_argument("--host", required=True)
serve.add_argument("--port", type=int, required=True)
serve.add_argument("--tensor-parallel-size", type=int, required=True)
serve.add_argument("--data-parallel-size", type=int, default=1)
serve.add_argument("--served-model-name")
serve.add_argument("--max-model-len", type=int)
serve.add_argument("--gpu-memory-utilization", type=float)
serve.add_argument("--trust-remote-code", action="store_true")
serve.add_argument("--enable-prefix-caching", action="store_true")
args = parser.parse_args()
with open(os.path.join(os.environ["HPC_EXPERIMENT_DIR"], "vllm_argv.json"), "w") as f:
    json.dump(sys.argv[1:], f)
os.execv(sys.executable, [sys.executable, {serve_tiny!r}, "--model", args.model, "--host", args.host, "--port",
                          str(args.port), "--served-model-name", args.served_model_name or args.model])
"""


@pytest.fixture
def upstream(tmp_path, online):
    """The online profile with a `vllm` on PATH, and the strict upstream-contract generator."""
    args, env = online
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "vllm"
    shim.write_text(VLLM_SHIM.format(python=sys.executable, serve_tiny=str(ROOT / "examples/datagen/serve_tiny.py")))
    shim.chmod(0o755)
    dotenv = Path(args[args.index("--dotenv") + 1])
    dotenv.write_text(dotenv.read_text() + f"PATH={bin_dir}:${{PATH}}\n")
    generator = tmp_path / "strict_generate.py"
    generator.write_text(STRICT_GENERATOR)
    return args, env, str(generator)


def test_upstream_config_and_strict_generator(launch, tmp_path, upstream):
    args, env, generator = upstream
    model = str(ROOT / "build" / "tiny" / "model")
    config = {"engine": {"type": "vllm_local", "model": model, "max_output_tokens": 8, "vllm_local": {}},
              "backend": {"type": "vllm", "healthcheck_max_attempts": 60, "healthcheck_retry_delay": 5},
              "vllm_server": {"model_path": model, "tensor_parallel_size": 1, "data_parallel_size": 2,
                              "custom_model_name": "tiny-served", "max_model_len": 2048, "gpu_memory_utilization": 0.5,
                              "trust_remote_code": True, "time_limit": "00:30:00",
                              "extra_args": ["--enable-prefix-caching"]},
              "extra_agent_kwargs": {"temperature": 0}, "chunk_array_max": 2}
    (tmp_path / "upstream.yaml").write_text(yaml.safe_dump(config))
    result = launch(*args, "--job_type", "datagen", "--datagen_config", str(tmp_path / "upstream.yaml"),
                    "--datagen_script", generator, "--datagen_target_repo", "org/up-tasks", "--datagen_extra_args",
                    "--limit 6", "--enable_trace_gen", "--trace_target_repo", "org/up-traces", "--num_chunks", "2",
                    "--job_name", "dgup", "--wait", extra_env=env)
    exp = tmp_path / "exp" / "dgup"
    assert result.returncode == 0, result.stdout + result.stderr + log_text(exp)
    jobs = jobs_by_key(exp)
    assert [jobs[k]["state"] for k in ("tasks", "traces", "cleanup")] == ["COMPLETED"] * 3
    assert jobs["server"]["state"] == "CANCELLED" and jobs["traces"]["elapsed"] == "2/2 tasks COMPLETED"
    assert json.loads((exp / "vllm_argv.json").read_text())[:3] == ["serve", model, "--host"]
    endpoint = json.loads((exp / "state" / "endpoint.json").read_text())
    assert endpoint["model_name"] == "tiny-served" and endpoint["endpoint_url"].startswith("http://")
    tasks = exp / "outputs" / "tasks"
    assert sorted(p.name for p in tasks.iterdir() if p.is_dir()) == [f"t{i}" for i in range(6)]
    for i in range(2):
        chunk = exp / "chunks" / f"chunk_{i:03d}"
        assert sorted(p.name for p in chunk.iterdir()) == [f"t{j}" for j in range(3 * i, 3 * i + 3)]
        out = exp / "outputs" / "traces" / f"chunk_{i:03d}"
        traces = [json.loads(p.read_text()) for p in sorted(out.glob("t*.json"))]
        assert [Path(t["task"]).parent for t in traces] == [tasks] * 3
        assert all(isinstance(t["answer"], str) for t in traces)
        argv = json.loads((out / "argv_traces.json").read_text())
        assert argv[argv.index("--tasks-input") + 1] == str(chunk)
        assert argv[argv.index("--target-repo") + 1] == f"org/up-traces-chunk{i:03d}"
        assert argv[argv.index("--endpoint-json") + 1] == str(exp / "state" / "endpoint.json")


def test_datagen_engine_without_a_config(launch, tmp_path, upstream):
    args, env, generator = upstream
    result = launch(*args, "--job_type", "datagen", "--datagen_engine", "none", "--datagen_script", generator,
                    "--datagen_extra_args", "--limit 2", "--job_name", "dgnone", "--wait", extra_env=env)
    exp = tmp_path / "exp" / "dgnone"
    assert result.returncode == 0, result.stdout + result.stderr + log_text(exp)
    assert [(j["key"], j["state"]) for j in manifest(exp)["jobs"]] == [("tasks", "COMPLETED")]
    assert yaml.safe_load((exp / "configs" / "datagen_config.resolved.yaml").read_text())["engine"]["type"] == "none"
    assert sorted(p.name for p in (exp / "outputs" / "tasks").iterdir() if p.is_dir()) == ["t0", "t1"]
