"""The local datagen payload: examples/datagen/serve_tiny.py (OpenAI-compatible server for the tiny model) and
examples/datagen/generate.py (the example generator), run as subprocesses, against the server and the fake hub.
Every generator run goes through a guard that refuses any network access but loopback."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DATAGEN = ROOT / "examples" / "datagen"
REPO_MODEL = "build/tiny/model"
# argv: GUARD SCRIPT ARGS...: runs SCRIPT as __main__, refusing name lookups/connects that are not loopback.
GUARD = """
import runpy, sys
def _guard(event, args):
    if event == "socket.getaddrinfo" or (event == "socket.connect" and isinstance(args[1], tuple)):
        host = args[0] if event == "socket.getaddrinfo" else args[1][0]
        host = host.decode() if isinstance(host, bytes) else str(host)
        if host not in ("127.0.0.1", "::1", "localhost"):
            raise ConnectionRefusedError(f"test guard: refused network access to {host!r}")
sys.addaudithook(_guard)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(tmp: Path, **extra: str) -> dict[str, str]:
    """No keys, endpoints or hub settings of the developer; a private HF_HOME; loopback never proxied."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OPENAI_", "ANTHROPIC_", "HF_", "HUGGINGFACE_"))}
    env.update(HF_HOME=str(tmp / "hf_home"), HF_HUB_DISABLE_PROGRESS_BARS="1", NO_PROXY="127.0.0.1,localhost",
               no_proxy="127.0.0.1,localhost", **extra)
    return env


def run_gen(tmp: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", GUARD, str(DATAGEN / "generate.py"), *args], cwd=tmp,
                          env=env or clean_env(tmp), capture_output=True, text=True, timeout=120)


def http(url: str, body: dict | None = None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def engine_config(tmp: Path, name: str = "engine.yaml", **engine) -> str:
    """An engine config in upstream's format (what the launcher writes as --engine-config)."""
    path = tmp / name
    extra = engine.pop("extra_agent_kwargs", {})
    path.write_text(yaml.safe_dump({"engine": {"type": "none", **engine}, "backend": {"type": "none"},
                                    "vllm_server": None, "extra_agent_kwargs": extra, "chunk_array_max": None}))
    return str(path)


def endpoint_json(tmp: Path, url: str, model: str) -> str:
    """An endpoint JSON as the server job publishes it (endpoint_url without /v1)."""
    path = tmp / "endpoint.json"
    path.write_text(json.dumps({"model_name": model, "endpoint_url": url.removesuffix("/v1")}))
    return str(path)


def make_tasks(tmp: Path, n: int = 6) -> Path:
    out = tmp / "tasks"
    proc = run_gen(tmp, "--stage", "tasks", "--engine-config", engine_config(tmp), "--output-dir", str(out),
                   "--num-tasks", str(n))
    assert proc.returncode == 0, proc.stderr
    return out


def tasks_input(tmp: Path, tasks: Path, n: int = 3) -> str:
    """A chunk as the launcher gives it: a directory of symlinks to the first n tasks."""
    chunk = tmp / "chunk_000"
    chunk.mkdir()
    for task in sorted(tasks.iterdir())[:n]:
        (chunk / task.name).symlink_to(task)
    return str(chunk)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """serve_tiny.py on a free port (model named as in tiny_local.yaml, found from the repo root)."""
    if not (importlib.util.find_spec("torch") and importlib.util.find_spec("transformers")):
        pytest.skip("needs torch and transformers")
    tmp = tmp_path_factory.mktemp("serve")
    model = REPO_MODEL
    if not (ROOT / REPO_MODEL / "config.json").is_file():  # build a private copy rather than touch build/
        subprocess.run([sys.executable, str(ROOT / "examples" / "make_tiny_model.py"), "--out", str(tmp / "tiny")],
                       check=True, capture_output=True, timeout=300)
        model = str(tmp / "tiny" / "model")
    port, log = free_port(), tmp / "server.log"
    started = time.monotonic()
    with log.open("w") as stream:
        proc = subprocess.Popen([sys.executable, "-c", GUARD, str(DATAGEN / "serve_tiny.py"), "--model", model,
                                 "--port", str(port), "--max-new-tokens", "16"],
                                cwd=tmp, env=clean_env(tmp), stdout=stream, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    while True:
        try:
            if http(f"{url}/models")[0] == 200:
                break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() - started > 120:
            proc.kill()
            pytest.fail(f"serve_tiny.py did not come up (exit {proc.poll()}):\n{log.read_text()[-3000:]}")
        time.sleep(0.1)
    print(f"serve_tiny.py ready after {time.monotonic() - started:.1f}s")
    yield {"url": url, "model": model, "log": log}
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0, log.read_text()[-3000:]
    assert "SIGTERM: shutting down" in log.read_text()


def test_server_models_and_chat(server):
    status, models = http(f"{server['url']}/models")
    assert status == 200 and models["object"] == "list"
    assert [(m["id"], m["object"]) for m in models["data"]] == [(server["model"], "model")]
    messages = [{"role": "user", "content": "What is three plus four?"}]
    status, answer = http(f"{server['url']}/chat/completions",
                          {"model": server["model"], "messages": messages, "max_tokens": 8, "temperature": 0})
    assert status == 200, answer
    assert answer["object"] == "chat.completion" and answer["model"] == server["model"]
    choice = answer["choices"][0]
    assert choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] in ("stop", "length")
    usage = answer["usage"]
    assert 1 <= usage["completion_tokens"] <= 8 and usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    again = http(f"{server['url']}/chat/completions", {"model": server["model"], "messages": messages, "max_tokens": 8})
    assert again[1]["choices"][0]["message"]["content"] == choice["message"]["content"]  # greedy
    status, error = http(f"{server['url']}/chat/completions", {"model": "other", "messages": messages})
    assert status == 404 and "other" in error["error"]["message"]
    deadline = time.monotonic() + 5
    while server["log"].read_text().count("POST /v1/chat/completions") < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server["log"].read_text().count("POST /v1/chat/completions") >= 3  # one log line per request


def test_tasks_then_traces(server, tmp_path):
    tasks = make_tasks(tmp_path)
    assert sorted(p.name for p in tasks.iterdir()) == [f"task_{i:04d}" for i in range(6)]
    first = json.loads((tasks / "task_0000" / "task.json").read_text())
    assert first == {"task_id": "task_0000", "question": "What is three plus four?", "answer": 7}
    out, jobs = tmp_path / "traces", tmp_path / "jobs"
    config = engine_config(tmp_path, type="vllm_local", model="ignored: the endpoint names the model")
    proc = run_gen(tmp_path, "--stage", "traces", "--engine-config", config, "--tasks-input",
                   tasks_input(tmp_path, tasks), "--output-dir", str(out), "--trace-jobs-dir", str(jobs),
                   "--endpoint-json", endpoint_json(tmp_path, server["url"], server["model"]),
                   "--trace-agent-name", "single_turn", "--trace-agent-kwargs", '{"max_tokens": 8}',
                   "--trace-n-concurrent", "2", "--trace-episodes", "last", "--trace-export-filter", "none",
                   "--trace-dataset-type", "SFT", "--trace-export-subagents", "--no-upload")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["task_0000.json", "task_0001.json", "task_0002.json"]
    trace = json.loads((out / "task_0001.json").read_text())
    assert trace["task"]["task_id"] == "task_0001" and trace["model"] == server["model"]
    assert trace["messages"] == [{"role": "user", "content": trace["task"]["question"]}]
    assert isinstance(trace["response"], str) and 1 <= trace["usage"]["completion_tokens"] <= 8
    assert trace["agent"]["name"] == "single_turn" and trace["agent"]["kwargs"] == {"max_tokens": 8}
    assert json.loads((jobs / "run.json").read_text())["tasks"] == 3


def test_config_supplies_agent_kwargs_and_endpoint(server, tmp_path):
    """Without --trace-agent-kwargs and --endpoint-json: extra_agent_kwargs and engine.vllm_local.endpoint_json."""
    tasks = make_tasks(tmp_path, 2)
    local = {"endpoint_json": endpoint_json(tmp_path, server["url"], server["model"])}
    config = engine_config(tmp_path, "cfg.yaml", type="VLLM_LOCAL", vllm_local=local, max_output_tokens=4,
                           extra_agent_kwargs={"system_prompt": "Answer with a number."})
    proc = run_gen(tmp_path, "--stage", "traces", "--tasks-input", tasks_input(tmp_path, tasks, 2), "--output-dir",
                   str(tmp_path / "traces"), env=clean_env(tmp_path, DATAGEN_CONFIG_PATH=config))
    assert proc.returncode == 0, proc.stderr
    trace = json.loads((tmp_path / "traces" / "task_0000.json").read_text())
    assert trace["messages"][0] == {"role": "system", "content": "Answer with a number."}
    assert trace["usage"]["completion_tokens"] <= 4


def test_stage_both_and_limit(tmp_path):
    out = tmp_path / "out"
    proc = run_gen(tmp_path, "--stage", "tasks", "--stage", "both", "--limit", "3", "--engine-config",
                   engine_config(tmp_path), "--output-dir", str(out), "--num-tasks", "5")
    assert proc.returncode == 0, proc.stderr
    assert len(list((out / "tasks").iterdir())) == 3 and len(list((out / "traces").glob("*.json"))) == 3


def test_strict_upstream_parsing(tmp_path):
    unknown = run_gen(tmp_path, "--stage", "tasks", "--engine-config", engine_config(tmp_path), "--output-dir",
                      str(tmp_path / "t"), "--tasks-list", "chunk.txt")
    assert unknown.returncode == 2 and "unrecognized arguments: --tasks-list" in unknown.stderr
    missing = run_gen(tmp_path, "--stage", "tasks", "--output-dir", str(tmp_path / "t"))
    assert missing.returncode == 2 and "Set --engine-config or export DATAGEN_CONFIG_PATH" in missing.stderr


def test_uploads_go_to_private_dataset_repos(server, fake_hub, tmp_path):
    env = clean_env(tmp_path, HF_TOKEN="x", **fake_hub.env())
    tasks = tmp_path / "tasks"
    proc = run_gen(tmp_path, "--stage", "tasks", "--engine-config", engine_config(tmp_path), "--output-dir",
                   str(tasks), "--num-tasks", "3", "--target-repo", "org/tiny-tasks", env=env)
    assert proc.returncode == 0, proc.stderr
    assert sorted(fake_hub.repo_files("org/tiny-tasks", "dataset")) == [f"task_{i:04d}/task.json" for i in range(3)]
    config = engine_config(tmp_path, "local.yaml", type="vllm_local")
    proc = run_gen(tmp_path, "--stage", "traces", "--engine-config", config, "--tasks-input",
                   tasks_input(tmp_path, tasks), "--output-dir", str(tmp_path / "traces"), "--endpoint-json",
                   endpoint_json(tmp_path, server["url"], server["model"]), "--target-repo",
                   "org/tiny-traces-chunk000", env=env)
    assert proc.returncode == 0, proc.stderr
    files = fake_hub.repo_files("org/tiny-traces-chunk000", "dataset")
    assert sorted(files) == ["task_0000.json", "task_0001.json", "task_0002.json"]
    assert json.loads(files["task_0002.json"])["model"] == server["model"]
    assert fake_hub.is_private("org/tiny-traces-chunk000", "dataset")
    assert len(fake_hub.commits("org/tiny-traces-chunk000", "dataset")) == 2  # the initial commit + one upload


def test_no_upload_and_failed_upload(fake_hub, tmp_path):
    env = clean_env(tmp_path, **fake_hub.env())  # no token: an upload gets 401
    args = ["--stage", "tasks", "--engine-config", engine_config(tmp_path), "--output-dir", str(tmp_path / "t"),
            "--num-tasks", "1", "--target-repo", "org/x"]
    assert run_gen(tmp_path, *args, "--no-upload", env=env).returncode == 0
    proc = run_gen(tmp_path, *args, env=env)
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 and "org/x" in proc.stderr, proc.stderr


def test_engine_none_needs_no_server(tmp_path):
    tasks = make_tasks(tmp_path, 4)
    proc = run_gen(tmp_path, "--stage", "traces", "--engine-config", engine_config(tmp_path), "--tasks-input",
                   tasks_input(tmp_path, tasks, 4), "--output-dir", str(tmp_path / "traces"),
                   "--trace-n-concurrent", "3")
    assert proc.returncode == 0, proc.stderr
    trace = json.loads((tmp_path / "traces" / "task_0000.json").read_text())
    assert trace["response"] == "(echo) What is three plus four?" and trace["engine"] == "none"
    assert len(list((tmp_path / "traces").iterdir())) == 4


def test_fail_exits_3(tmp_path):
    for stage in ("tasks", "traces"):
        proc = run_gen(tmp_path, "--stage", stage, "--output-dir", str(tmp_path / stage), "--fail")
        assert proc.returncode == 3, proc.stderr
        assert not (tmp_path / stage).exists()


def test_unreachable_endpoint_is_one_clear_error_line(tmp_path):
    tasks = make_tasks(tmp_path, 2)
    url = f"http://127.0.0.1:{free_port()}/v1"
    secret = "sk-test-must-never-be-printed"
    config = engine_config(tmp_path, "openai.yaml", type="openai", model="m", openai={"api_key_env": "MY_KEY"})
    proc = run_gen(tmp_path, "--stage", "traces", "--engine-config", config, "--tasks-input",
                   tasks_input(tmp_path, tasks, 2), "--output-dir", str(tmp_path / "traces"),
                   "--trace-model", "openai/m", "--trace-n-concurrent", "2",
                   env=clean_env(tmp_path, OPENAI_BASE_URL=url, MY_KEY=secret, OPENAI_API_KEY=secret))
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("generate.py: error:"), proc.stderr
    assert f"{url}/chat/completions" in lines[0] and "refused" in lines[0].lower()
    assert secret not in proc.stderr + proc.stdout


def test_http_error_names_url_and_status(server, tmp_path):
    tasks = make_tasks(tmp_path, 1)
    proc = run_gen(tmp_path, "--stage", "traces", "--engine-config", engine_config(tmp_path, type="vllm_local"),
                   "--tasks-input", tasks_input(tmp_path, tasks, 1), "--output-dir", str(tmp_path / "traces"),
                   "--endpoint-json", endpoint_json(tmp_path, server["url"], "no-such-model"))
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert f"{server['url']}/chat/completions -> HTTP 404" in proc.stderr


def test_anthropic_without_key_exits_2(tmp_path):
    tasks = make_tasks(tmp_path, 1)
    proc = run_gen(tmp_path, "--stage", "traces", "--engine-config",
                   engine_config(tmp_path, "a.yaml", type="anthropic", model="claude"), "--tasks-input",
                   tasks_input(tmp_path, tasks, 1), "--output-dir", str(tmp_path / "traces"))
    assert proc.returncode == 2 and "ANTHROPIC_API_KEY" in proc.stderr
    assert proc.stderr.strip().count("\n") == 0, proc.stderr


def test_tiny_local_yaml():
    config = yaml.safe_load((DATAGEN / "tiny_local.yaml").read_text())
    assert set(config) == {"engine", "model", "server", "chunk_size", "chunk_parallelism"}
    assert set(config["server"]) == {"command", "gpus", "health_timeout"}
    assert (config["engine"], config["model"], config["chunk_size"], config["chunk_parallelism"]) == \
        ("vllm_local", REPO_MODEL, 4, 2)
    command = [a.format(hpc_root=ROOT, model=config["model"], port=8000) for a in config["server"]["command"]]
    assert Path(command[1]) == DATAGEN / "serve_tiny.py" and command[2:6] == ["--model", REPO_MODEL, "--port", "8000"]
