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


def make_tasks(tmp: Path, n: int = 6) -> Path:
    out = tmp / "tasks"
    proc = run_gen(tmp, "--stage", "tasks", "--output-dir", str(out), "--num-tasks", str(n))
    assert proc.returncode == 0, proc.stderr
    return out


def tasks_list(tmp: Path, tasks: Path, n: int = 3) -> Path:
    path = tmp / "chunk_000.txt"
    path.write_text("".join(f"{d}\n" for d in sorted(tasks.iterdir())[:n]))
    return path


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
    out = tmp_path / "traces"
    proc = run_gen(tmp_path, "--stage", "traces", "--tasks-list", str(tasks_list(tmp_path, tasks)), "--output-dir",
                   str(out), "--engine", "vllm_local", "--model", server["model"], "--endpoint", server["url"],
                   "--agent-name", "single_turn", "--agent-kwargs", '{"max_tokens": 8}', "--n-concurrent", "2",
                   "--num-tasks", "6")  # the launcher passes EXTRA to both stages
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["task_0000.json", "task_0001.json", "task_0002.json"]
    trace = json.loads((out / "task_0001.json").read_text())
    assert trace["task"]["task_id"] == "task_0001" and trace["model"] == server["model"]
    assert trace["messages"] == [{"role": "user", "content": trace["task"]["question"]}]
    assert isinstance(trace["response"], str) and 1 <= trace["usage"]["completion_tokens"] <= 8
    assert trace["agent"]["name"] == "single_turn" and trace["agent"]["kwargs"] == {"max_tokens": 8}


def test_uploads_go_to_private_dataset_repos(server, fake_hub, tmp_path):
    env = clean_env(tmp_path, HF_TOKEN="x", **fake_hub.env())
    tasks = tmp_path / "tasks"
    proc = run_gen(tmp_path, "--stage", "tasks", "--output-dir", str(tasks), "--num-tasks", "3", "--target-repo",
                   "org/tiny-tasks", env=env)
    assert proc.returncode == 0, proc.stderr
    assert sorted(fake_hub.repo_files("org/tiny-tasks", "dataset")) == [f"task_{i:04d}/task.json" for i in range(3)]
    proc = run_gen(tmp_path, "--stage", "traces", "--tasks-list", str(tasks_list(tmp_path, tasks)), "--output-dir",
                   str(tmp_path / "traces"), "--model", server["model"], "--endpoint", server["url"],
                   "--target-repo", "org/tiny-traces-chunk000", env=env)
    assert proc.returncode == 0, proc.stderr
    files = fake_hub.repo_files("org/tiny-traces-chunk000", "dataset")
    assert sorted(files) == ["task_0000.json", "task_0001.json", "task_0002.json"]
    assert json.loads(files["task_0002.json"])["model"] == server["model"]
    assert fake_hub.is_private("org/tiny-traces-chunk000", "dataset")
    assert len(fake_hub.commits("org/tiny-traces-chunk000", "dataset")) == 2  # the initial commit + one upload


def test_failed_upload_is_one_error_line(fake_hub, tmp_path):
    proc = run_gen(tmp_path, "--stage", "tasks", "--output-dir", str(tmp_path / "t"), "--num-tasks", "1",
                   "--target-repo", "org/x", env=clean_env(tmp_path, **fake_hub.env()))  # no token: 401
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 and "org/x" in proc.stderr, proc.stderr


def test_engine_none_needs_no_server(tmp_path):
    tasks = make_tasks(tmp_path, 4)
    proc = run_gen(tmp_path, "--stage", "traces", "--tasks-list", str(tasks_list(tmp_path, tasks, 4)),
                   "--output-dir", str(tmp_path / "traces"), "--engine", "none", "--n-concurrent", "3")
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
    proc = run_gen(tmp_path, "--stage", "traces", "--tasks-list", str(tasks_list(tmp_path, tasks, 2)), "--output-dir",
                   str(tmp_path / "traces"), "--engine", "openai", "--model", "m", "--endpoint", url,
                   "--n-concurrent", "2", env=clean_env(tmp_path, OPENAI_API_KEY=secret))
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("generate.py: error:"), proc.stderr
    assert f"{url}/chat/completions" in lines[0] and "refused" in lines[0].lower()
    assert secret not in proc.stderr + proc.stdout


def test_http_error_names_url_and_status(server, tmp_path):
    tasks = make_tasks(tmp_path, 1)
    proc = run_gen(tmp_path, "--stage", "traces", "--tasks-list", str(tasks_list(tmp_path, tasks, 1)), "--output-dir",
                   str(tmp_path / "traces"), "--model", "no-such-model", "--endpoint", server["url"])
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert f"{server['url']}/chat/completions -> HTTP 404" in proc.stderr


def test_anthropic_without_key_exits_2(tmp_path):
    tasks = make_tasks(tmp_path, 1)
    proc = run_gen(tmp_path, "--stage", "traces", "--tasks-list", str(tasks_list(tmp_path, tasks, 1)), "--output-dir",
                   str(tmp_path / "traces"), "--engine", "anthropic", "--model", "claude")
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
