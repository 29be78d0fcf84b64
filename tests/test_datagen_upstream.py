"""Datagen as upstream: upstream-format configs (every key), refusals with did-you-mean, --datagen_engine without a
config, trace flags without --enable_trace_gen, and the generator command lines checked against a generator written
to upstream's contract only (STRICT_GENERATOR, also run on the local cluster by the integration tests). Pure."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
import yaml

from helpers import script
from hpc.datagen_schema import BACKEND, ENGINE, TOP, VLLM_SERVER
from hpc.errors import LaunchError
from hpc.jobs.datagen import build_plan
from hpc.options import LaunchOptions
from hpc.spec import PORT

#: A generator that knows nothing of hpc-launch: upstream's flag set, argparse parse_args (unknown flags exit 2,
#: abbreviations allowed), the engine config checked against upstream's schema keys, the endpoint JSON read as
#: upstream's readers do. Tasks: --limit task directories (default 4); traces: one chat completion per task.
STRICT_GENERATOR = r'''
import argparse, json, os, sys, urllib.request
from pathlib import Path

import yaml

SCHEMA = {"engine": {"type", "model", "max_output_tokens", "healthcheck_interval", "request_params", "openai",
                     "anthropic", "vllm_local", "extra_args"}, "backend": None, "vllm_server": None,
          "extra_agent_kwargs": None, "chunk_array_max": None}


def build_parser():
    p = argparse.ArgumentParser(description="strict upstream-contract generator", conflict_handler="resolve")
    for flag in ("--input-dir", "--target-repo", "--output-dir", "--tasks-input"):
        p.add_argument(flag, type=str, default=None)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--no-upload", action="store_true")
    p.add_argument("--engine-config", type=str, default=os.environ.get("DATAGEN_CONFIG_PATH"))
    for flag in ("--trace-harbor-config", "--trace-model", "--trace-agent-name", "--trace-jobs-dir"):
        p.add_argument(flag, type=str, default=None)
    p.add_argument("--trace-n-concurrent", type=int, default=None)
    p.add_argument("--trace-agent-kwargs", type=str, default=None)
    p.add_argument("--trace-env", type=str, default=None)
    p.add_argument("--trace-episodes", choices=["all", "last"], default=None)
    p.add_argument("--trace-export-filter", choices=["success", "failure", "none"], default=None)
    p.add_argument("--trace-dataset-type", type=str, default=None)
    p.add_argument("--endpoint-json", dest="endpoint_json", type=str, default=None)
    p.add_argument("--trace-export-subagents", dest="trace_export_subagents", action="store_true", default=True)
    p.add_argument("--trace-skip-subagents", dest="trace_export_subagents", action="store_false")
    p.add_argument("--trace-eval-only", action="store_true")
    p.add_argument("--trace-agent-timeout-sec", type=float, default=None)
    p.add_argument("--trace-verifier-timeout-sec", type=float, default=None)
    p.add_argument("--disable-verification", action="store_true")
    p.add_argument("--sandbox-cpu", "--sandbox_cpu", type=int, default=None)
    p.add_argument("--sandbox-memory-gb", "--sandbox_memory_gb", type=int, default=None)
    p.add_argument("--sandbox-disk-gb", "--sandbox_disk_gb", type=int, default=None)
    p.add_argument("--stage", choices=["tasks", "traces", "both"], default="tasks")
    return p


def main():
    parser = build_parser()
    args = parser.parse_args()
    if not args.engine_config:
        parser.error("No engine configuration provided. Set --engine-config or export DATAGEN_CONFIG_PATH.")
    config = yaml.safe_load(Path(args.engine_config).read_text())
    if set(config) != set(SCHEMA) or set(config["engine"]) != SCHEMA["engine"]:
        sys.exit(f"engine config {args.engine_config} does not match upstream's schema: {sorted(config)}")
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"argv_{args.stage}.json").write_text(json.dumps(sys.argv[1:]))
    if args.stage == "tasks":
        for i in range(args.limit or 4):
            (out / f"t{i}").mkdir(exist_ok=True)
            (out / f"t{i}" / "task.json").write_text(json.dumps({"question": f"What is {i} plus {i}?"}))
        return
    endpoint = json.loads(Path(args.endpoint_json or config["engine"]["vllm_local"]["endpoint_json"]).read_text())
    base = endpoint["endpoint_url"].rstrip("/") + "/v1"
    for task in sorted(Path(args.tasks_input).iterdir()):
        question = json.loads((task / "task.json").read_text())["question"]
        body = {"model": endpoint["model_name"], "messages": [{"role": "user", "content": question}], "max_tokens": 4}
        request = urllib.request.Request(base + "/chat/completions", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            answer = json.loads(response.read())["choices"][0]["message"]["content"]
        (out / f"{task.name}.json").write_text(json.dumps({"task": str(task.resolve()), "answer": answer}))


if __name__ == "__main__":
    main()
'''

EVERY_KEY = {
    "engine": {"type": "VLLM_LOCAL", "model": "org/m", "max_output_tokens": 512, "healthcheck_interval": 60,
               "request_params": {"temperature": 0.3}, "openai": None, "anthropic": None,
               "vllm_local": {"api_key_env": "MY_VLLM_KEY", "healthcheck_interval": 30}, "extra_args": {"seed": 1}},
    "backend": {"type": "vllm", "wait_for_endpoint": True, "ray_port": 6380, "api_port": 9000,
                "tensor_parallel_size": 1, "pipeline_parallel_size": 1, "data_parallel_size": 1,
                "ray_cgraph_submit_timeout": 600, "ray_cgraph_get_timeout": 900.5,
                "ray_cgraph_max_inflight_executions": 16, "healthcheck_max_attempts": 10, "healthcheck_retry_delay": 6},
    "vllm_server": {
        "model_path": "org/m", "num_replicas": 1, "tensor_parallel_size": 2, "pipeline_parallel_size": 1,
        "data_parallel_size": 2, "custom_model_name": "m-served", "time_limit": "06:00:00",
        "hf_overrides": {"rope_scaling": {"rope_type": "yarn"}}, "use_deep_gemm": True, "max_num_seqs": 32,
        "gpu_memory_utilization": 0.8, "enable_expert_parallel": True, "swap_space": 8, "max_seq_len_to_capture": 8192,
        "max_model_len": 16384, "cpu_offload_gb": 4, "kv_offloading_size": 2.5, "kv_offloading_backend": "native",
        "trust_remote_code": True, "disable_log_requests": True, "enable_auto_tool_choice": True,
        "tool_call_parser": "hermes", "reasoning_parser": "qwen3", "logging_level": "DEBUG",
        "extra_args": {"enable-prefix-caching": True, "--dtype": "bfloat16", "enforce-eager": False},
    },
    "extra_agent_kwargs": {"reasoning_effort": "low"},
    "chunk_array_max": 3,
}


@pytest.fixture
def workdir(tmp_path, monkeypatch, user_profiles):
    monkeypatch.chdir(tmp_path)
    user_profiles("gpu4", internet=True)  # the local cluster's nodes (4 GPUs), online
    (tmp_path / "gen.py").write_text(STRICT_GENERATOR)
    (tmp_path / "every.yaml").write_text(yaml.safe_dump(EVERY_KEY))
    secrets = tmp_path / "secrets.env"
    secrets.write_text("OPENAI_API_KEY=sk-never-in-a-script\n")
    secrets.chmod(0o600)
    return tmp_path


def opts(tmp_path, **datagen) -> LaunchOptions:
    base = dict(datagen_config="every.yaml", datagen_script="gen.py", enable_trace_gen=True,
                trace_target_repo="org/traces", num_chunks=2, job_name="up")
    return LaunchOptions(job_type="datagen", cluster="gpu4", experiments_dir=str(tmp_path / "exp"),
                         **{**base, **datagen})


def write(tmp_path, name: str, config: dict) -> str:
    (tmp_path / name).write_text(yaml.safe_dump(config))
    return name


def engine_file(plan, stage: str = "tasks") -> dict:
    body = plan.job(stage).body
    return yaml.safe_load(plan.files[str(body.engine_config).removeprefix(f"{plan.experiment_dir}/")])


def generator_argv(text: str) -> list[str]:
    """The generator's argv in a rendered script, as bash would pass it (chunk 001 for traces)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("python gen.py"))
    command = []
    for line in lines[start:]:
        command.append(line.strip().removesuffix("\\"))
        if not line.endswith("\\"):
            break
    shell = 'chunk_dir=/exp/chunks/chunk_001; chunk_id=001; python() { printf "%s\\0" "$@"; }; ' + " ".join(command)
    return subprocess.run(["bash", "-c", shell], capture_output=True, text=True, check=True).stdout.split("\0")[:-1]


def strict_parser():
    namespace: dict = {"__name__": "strict"}
    exec(STRICT_GENERATOR, namespace)
    return namespace["build_parser"]()


def test_every_upstream_key_is_used(workdir):
    plan = build_plan(opts(workdir, trace_agent_kwargs='{"temperature": 0.9}'))
    assert [j.key for j in plan.jobs] == ["server", "tasks", "traces", "cleanup"]
    server = plan.job("server")
    assert server.body.command == [
        "vllm", "serve", "org/m", "--host", "0.0.0.0", "--port", PORT, "--tensor-parallel-size", "2",
        "--data-parallel-size", "2", "--served-model-name", "m-served", "--max-model-len", "16384",
        "--max-num-seqs", "32", "--gpu-memory-utilization", "0.8", "--swap-space", "8",
        "--max-seq-len-to-capture", "8192", "--cpu-offload-gb", "4", "--kv-offloading-size", "2.5",
        "--kv-offloading-backend", "native", "--hf-overrides", '{"rope_scaling": {"rope_type": "yarn"}}',
        "--tool-call-parser", "hermes", "--reasoning-parser", "qwen3", "--enable-expert-parallel",
        "--trust-remote-code", "--enable-auto-tool-choice", "--dtype", "bfloat16", "--enable-prefix-caching"]
    assert server.body.model_name == "m-served" and server.body.port_base == 9000
    assert (server.resources.gpus_per_node, server.resources.time_limit) == (4, "06:00:00")
    env = server.prelude.env
    assert (env["VLLM_USE_DEEP_GEMM"], env["VLLM_LOGGING_LEVEL"]) == ("1", "DEBUG")
    assert (env["RAY_CGRAPH_submit_timeout"], env["RAY_CGRAPH_get_timeout"],
            env["RAY_CGRAPH_max_inflight_executions"]) == ("600", "900.5", "16")
    assert plan.job("tasks").body.wait_timeout == 60  # healthcheck_max_attempts x healthcheck_retry_delay
    assert plan.job("traces").array.parallel == 3  # chunk_array_max
    config = engine_file(plan)
    endpoint = str(plan.experiment_dir / "state" / "endpoint.json")
    assert config["engine"]["type"] == "vllm_local" and config["engine"]["vllm_local"]["endpoint_json"] == endpoint
    assert config["backend"]["endpoint_json_path"] == endpoint == config["vllm_server"]["endpoint_json_path"]
    assert config["vllm_server"]["hf_overrides"] == '{"rope_scaling": {"rope_type": "yarn"}}'
    for section, schema in (("engine", ENGINE), ("backend", BACKEND), ("vllm_server", VLLM_SERVER)):
        assert list(config[section]) == list(schema)  # upstream's keys only, all of them
    assert list(config) == list(TOP)
    traces = generator_argv(script(plan, "traces"))
    kwargs = json.loads(traces[traces.index("--trace-agent-kwargs") + 1])
    assert kwargs == {"reasoning_effort": "low", "temperature": 0.9}  # the flag over extra_agent_kwargs
    assert "sk-never" not in "".join(plan.files.values()) + "".join(script(plan, j.key) for j in plan.jobs)


def test_generator_command_lines_are_upstreams(workdir):
    (workdir / "harbor.yaml").write_text(yaml.safe_dump({"agents": [{"name": "terminus-2", "model_name": "h/m"}]}))
    plan = build_plan(opts(workdir, datagen_target_repo="org/tasks", datagen_extra_args="--stage both --limit 200",
                           datagen_input_dir="raw", disable_verification=True,
                           trace_harbor_config="harbor.yaml", trace_agent_name="terminus-2", trace_n_concurrent=4,
                           trace_env="docker", trace_export_subagents=False, trace_eval_only=True,
                           trace_agent_timeout_sec=600.0, trace_verifier_timeout_sec=90.5))
    exp, cfg = plan.experiment_dir, f"{plan.experiment_dir}/configs/datagen_config.resolved.yaml"
    tasks, traces = generator_argv(script(plan, "tasks")), generator_argv(script(plan, "traces"))
    assert tasks == ["gen.py", "--stage", "tasks", "--engine-config", cfg, "--input-dir", "raw",
                     "--disable-verification", "--output-dir", f"{exp}/outputs/tasks", "--target-repo", "org/tasks",
                     "--stage", "both", "--limit", "200"]
    assert traces == [
        "gen.py", "--stage", "traces", "--engine-config", cfg, "--trace-model", "h/m", "--trace-agent-name",
        "terminus-2", "--trace-agent-kwargs", '{"reasoning_effort": "low"}', "--trace-n-concurrent", "4",
        "--trace-env", "docker", "--trace-harbor-config", "harbor.yaml", "--trace-episodes", "last",
        "--trace-export-filter", "none", "--trace-dataset-type", "SFT", "--trace-agent-timeout-sec", "600",
        "--trace-verifier-timeout-sec", "90.5", "--trace-skip-subagents", "--trace-eval-only",
        "--disable-verification", "--tasks-input", "/exp/chunks/chunk_001", "--output-dir",
        f"{exp}/outputs/traces/chunk_001", "--trace-jobs-dir", f"{exp}/trace_jobs/chunk_001", "--target-repo",
        "org/traces-chunk001", "--endpoint-json", f"{exp}/state/endpoint.json"]
    parsed = strict_parser().parse_args(traces[1:])
    assert (parsed.stage, parsed.trace_export_subagents, parsed.endpoint_json) == ("traces", False, traces[-1])
    assert strict_parser().parse_args(tasks[1:]).stage == "both"  # the extra args come last and win
    assert plan.job("tasks").prelude.env["DATAGEN_CONFIG_PATH"] == cfg


def test_task_type_goes_to_both_stages_as_upstream_passes_it(workdir):
    """Only generators that define --task-type accept it (upstream's shared parser does not)."""
    plan = build_plan(opts(workdir, task_type="bash"))
    for key in ("tasks", "traces"):
        argv = generator_argv(script(plan, key))
        assert argv[argv.index("--task-type") + 1] == "bash"
        with pytest.raises(SystemExit):
            strict_parser().parse_args(argv[1:])


def test_offline_generators_get_no_upload(workdir, user_profiles):
    user_profiles("gpu4", internet=False)
    plan = build_plan(opts(workdir, datagen_target_repo="org/tasks"))
    for key in ("tasks", "traces"):
        argv = generator_argv(script(plan, key))
        assert "--no-upload" in argv and "--target-repo" not in argv
        strict_parser().parse_args(argv[1:])


@pytest.mark.parametrize("config, message", [
    ({**EVERY_KEY, "vllm_sever": {}}, "unknown key 'vllm_sever'; did you mean 'vllm_server'?"),
    ({**EVERY_KEY, "engine": {"type": "openai", "modle": "m"}}, "every.yaml: unknown key 'engine.modle'; did you "
                                                                 "mean 'engine.model'?"),
    ({**EVERY_KEY, "backend": {"typ": "ray"}}, "unknown key 'backend.typ'; did you mean 'backend.type'?"),
    ({**EVERY_KEY, "vllm_server": {"model_path": "m", "tensor_paralel_size": 2}},
     "unknown key 'vllm_server.tensor_paralel_size'; did you mean 'vllm_server.tensor_parallel_size'?"),
    ({"engine": {"type": "vllm_local", "vllm_local": {"endpoint": "x"}}},
     "unknown key 'engine.vllm_local.endpoint'; did you mean 'engine.vllm_local.endpoint_json'?"),
    ({"engine": "vllm_local", "model": "m", "servr": {"command": ["x"]}},
     "unknown key 'servr'; did you mean 'server'?"),
    ({"engine": "vllm_local", "model": "m", "server": {"comand": ["x"]}}, "unknown key 'server.comand'; did you "
                                                                         "mean 'server.command'?"),
    ({"engine": {"type": "vllm_local"}, "model": "m"}, "'model' belongs to our format"),
    ({"engine": {"type": "vllm_local"}, "vllm_server": {"tensor_parallel_size": 1}}, "vllm_server.model_path is "
                                                                                     "required"),
    ({"engine": {"type": "vllm_local"}, "vllm_server": {"model_path": "m", "swap_space": "lots"}},
     "every.yaml: vllm_server.swap_space must be int, not 'lots'"),
    ({"engine": {"type": "gpt5"}}, "unknown engine 'gpt5'"),
    ({"engine": {"type": "vllm_local"}, "backend": {"type": "slurm"}}, "unknown backend 'slurm'"),
    ({"engine": {"type": "openai", "openai": {"api_key": "sk-1"}}}, "engine.openai.api_key holds a key"),
    ({"engine": {"type": "none", "request_params": {"auth_token": "abc"}}}, "request_params.auth_token looks like a "
                                                                            "secret"),
    ({"engine": {"type": "vllm_local"}, "vllm_server": {"model_path": "m", "extra_args": ["--api-key", "k"]}},
     "no --api-key in a config; put VLLM_API_KEY"),
    ({"engine": {"type": "vllm_local"}, "vllm_server": {"model_path": "m", "num_replicas": 2}},
     "use data_parallel_size 2 instead"),
    ({"engine": {"type": "vllm_local"}, "vllm_server": {"model_path": "m", "tensor_parallel_size": 8}},
     "the server needs 8 GPUs but a node of gpu4 has 4"),
    ({"engine": {"type": "vllm_local"}, "vllm_server": {"model_path": "m", "time_limit": "166:00:00"}},
     "server time_limit 6-22:00:00: --time_limit 6-22:00:00 exceeds"),
    ({"engine": {"type": "none"}, "chunk_parallelism": 2, "chunk_array_max": 3}, "keep one"),
])
def test_bad_configs(workdir, config, message):
    write(workdir, "every.yaml", config)
    with pytest.raises(LaunchError, match=re.escape(message)):
        build_plan(opts(workdir, secrets_env="secrets.env"))


@pytest.mark.parametrize("flag, value", [("trace_target_repo", "org/t"), ("trace_model", "m"), ("num_chunks", 3),
                                         ("trace_engine", "openai"), ("trace_backend", "none"),
                                         ("trace_export_subagents", False), ("chunk_parallelism", 2),
                                         ("trace_harbor_config", "h.yaml")])
def test_trace_flags_need_enable_trace_gen(workdir, flag, value):
    changes = {"enable_trace_gen": False, "trace_target_repo": None, "num_chunks": None, flag: value}
    with pytest.raises(LaunchError, match=f"--{flag} is a trace option but trace generation is off; add "
                                          "--enable_trace_gen"):
        build_plan(opts(workdir, **changes))


def test_datagen_engine_needs_no_config(workdir):
    plan = build_plan(opts(workdir, datagen_config=None, datagen_engine="openai", datagen_model="gpt-4.1-mini",
                           secrets_env="secrets.env"))
    assert [j.key for j in plan.jobs] == ["tasks", "traces"]
    config = engine_file(plan)
    assert (config["engine"]["type"], config["engine"]["model"], config["backend"]["type"]) == \
        ("openai", "gpt-4.1-mini", "vllm")
    traces = generator_argv(script(plan, "traces"))
    assert traces[traces.index("--trace-model") + 1] == "openai/gpt-4.1-mini" and "--endpoint-json" not in traces
    assert "OPENAI_API_KEY" not in script(plan, "tasks")  # read from the secrets file the job sources


def test_datagen_engine_overrides_the_config_and_config_path_comes_from_the_environment(workdir):
    plan = build_plan(opts(workdir, datagen_config=None, datagen_engine="none"),
                      environ={"DATAGEN_CONFIG_PATH": "every.yaml",
                               "HPC_LAUNCH_PROFILES": str(workdir / "my_profiles")})
    assert engine_file(plan)["engine"]["type"] == "none" and [j.key for j in plan.jobs] == ["tasks", "traces"]


@pytest.mark.parametrize("changes, message", [
    ({"datagen_engine": None}, "needs --datagen_config (a YAML naming the engine) or --datagen_engine TYPE"),
    ({"datagen_engine": "vllm_local"}, "engine vllm_local needs a server: vllm_server"),
    ({"datagen_engine": "anthropic", "datagen_model": "claude"}, "engine anthropic reads ANTHROPIC_API_KEY in the "
                                                                 "jobs"),
])
def test_datagen_engine_mistakes(workdir, changes, message):
    with pytest.raises(LaunchError, match=re.escape(message)):
        build_plan(opts(workdir, datagen_config=None, **changes))


def test_trace_engine_and_backend_change_only_the_traces(workdir):
    plan = build_plan(opts(workdir, trace_engine="openai", trace_model="gpt-4.1", secrets_env="secrets.env"))
    assert [j.key for j in plan.jobs] == ["server", "tasks", "traces", "cleanup"]
    tasks, traces = engine_file(plan)["engine"], engine_file(plan, "traces")["engine"]
    assert (tasks["type"], traces["type"], traces["model"]) == ("vllm_local", "openai", "gpt-4.1")
    assert plan.job("traces").body.server_name is None and plan.job("traces").body.engine_config.endswith(
        "datagen_config_trace.resolved.yaml")
    assert [d.job for d in plan.job("traces").dependencies] == ["tasks"]  # not on the server
    no_server = build_plan(opts(workdir, enable_task_gen=False, trace_input_path=".", num_chunks=None, chunk_size=1,
                                trace_backend="none", job_name="up2"))
    assert "server" not in [j.key for j in no_server.jobs]


def test_endpoint_json_path_and_our_extras_in_upstream_format(workdir):
    config = {"engine": {"type": "vllm_local"}, "chunk_size": 2, "chunk_parallelism": 5, "cpus_per_task": 2,
              "vllm_server": {"model_path": "m", "endpoint_json_path": "shared/endpoint.json"}}
    write(workdir, "every.yaml", config)
    plan = build_plan(opts(workdir, chunk_parallelism=None))
    endpoint = str(workdir / "shared" / "endpoint.json")
    assert plan.job("server").body.endpoint_file == endpoint
    assert engine_file(plan)["engine"]["vllm_local"]["endpoint_json"] == endpoint
    assert plan.job("traces").array.parallel == 5 and plan.job("tasks").resources.cpus_per_node == 2


def test_our_format_keeps_working(workdir):
    write(workdir, "every.yaml", {"engine": "vllm_local", "model": "build/tiny/model", "chunk_parallelism": 2,
                                  "server": {"command": ["python", "serve.py", "--model", "{model}", "--port", "{port}",
                                                         "--gpus", "{gpus}"], "gpus": 2, "port": 8100}})
    plan = build_plan(opts(workdir))
    server = plan.job("server")
    assert server.body.command == ["python", "serve.py", "--model", "build/tiny/model", "--port", PORT, "--gpus", "2"]
    assert (server.body.model_name, server.body.port_base, server.resources.gpus_per_node) == \
        ("build/tiny/model", 8100, 2)
    config = engine_file(plan)
    assert (config["engine"]["type"], config["engine"]["model"], config["vllm_server"]) == \
        ("vllm_local", "build/tiny/model", None)
