#!/usr/bin/env python3
"""Example generator for hpc-launch datagen: arithmetic questions (tasks), one chat completion each (traces).

It follows upstream's generator contract (OpenThoughts-Agent `data/generation`): the same flags, parsed strictly
(unknown flags exit 2), and the engine read from the upstream-format config named by --engine-config (default
$DATAGEN_CONFIG_PATH). The launcher calls it so:
```
generate.py --stage tasks  --engine-config CFG [--input-dir D] --output-dir DIR [--target-repo REPO] [--no-upload]
            [EXTRA...]
    Writes one subdirectory per task into DIR (DIR/<task_id>/task.json).
generate.py --stage traces --engine-config CFG --tasks-input CHUNK_DIR --output-dir DIR [--target-repo REPO]
            [--trace-model M] [--trace-agent-name A] [--trace-agent-kwargs JSON] [--trace-n-concurrent N]
            [--trace-env E] [--trace-harbor-config F] [--trace-jobs-dir J] [--endpoint-json F] [--no-upload] ...
    CHUNK_DIR holds the chunk's tasks (symlinks to task directories, or task JSON files). For each task, asks
    the model and writes DIR/<task_id>.json (task, messages, response, model, agent); J/run.json records the run.
--stage both: tasks into DIR/tasks, then their traces into DIR/traces. DIR is uploaded to the private dataset repo
REPO (one commit) unless --no-upload.
```
Engines (engine.type): vllm_local (the endpoint JSON's endpoint_url and model_name, from --endpoint-json,
$TRACE_ENDPOINT_JSON or engine.vllm_local.endpoint_json; else vllm_local.base_url), openai (OPENAI_BASE_URL, else
api.openai.com), anthropic, none (no model: traces echo the task). API keys come from the variable that
api_key_env names (default OPENAI_API_KEY / ANTHROPIC_API_KEY). Requests get max_tokens (engine.max_output_tokens,
default 32), temperature 0, engine.request_params, then the agent kwargs (--trace-agent-kwargs, else the config's
extra_agent_kwargs; system_prompt and timeout are the agent's own). --limit caps the tasks of either stage.
This example's own flags: --num-tasks N (tasks stage: N questions, ids task_0000..; default 8), --fail (exit 3).
Exit codes: 0 done, 1 a request, task or upload failed (one error line), 2 bad arguments/engine setup, 3 --fail.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import yaml

WORDS = "zero one two three four five six seven eight nine ten".split()
OPS = {"plus": lambda a, b: a + b, "minus": lambda a, b: a - b, "times": lambda a, b: a * b}
SECRETS = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "HF_TOKEN")


class Failed(Exception):
    """A failed request, task or upload: one error line, exit 1."""


class Usage(Exception):
    """Bad arguments or engine setup: one error line, exit 2."""


def one_line(text: str, limit: int = 300) -> str:
    """Whitespace collapsed, cut to `limit` characters, with any secret from the environment masked."""
    text = " ".join(text.split())[:limit]
    for name in SECRETS:
        if len(value := os.environ.get(name, "")) >= 8:
            text = text.replace(value, "***")
    return text


def parser() -> argparse.ArgumentParser:
    """Upstream's generator flags (same names, types and defaults), then this example's own."""
    p = argparse.ArgumentParser(description="hpc-launch example generator (see the module docstring)")
    for flag in ("--input-dir", "--target-repo", "--output-dir", "--tasks-input", "--trace-harbor-config",
                 "--trace-model", "--trace-agent-name", "--trace-jobs-dir", "--trace-agent-kwargs", "--trace-env",
                 "--trace-dataset-type", "--endpoint-json"):
        p.add_argument(flag)
    p.add_argument("--limit", type=int)
    p.add_argument("--no-upload", action="store_true")
    p.add_argument("--engine-config", default=os.environ.get("DATAGEN_CONFIG_PATH"))
    p.add_argument("--trace-n-concurrent", type=int)
    p.add_argument("--trace-episodes", choices=("all", "last"))
    p.add_argument("--trace-export-filter", choices=("success", "failure", "none"))
    p.add_argument("--trace-export-subagents", dest="trace_export_subagents", action="store_true", default=True)
    p.add_argument("--trace-skip-subagents", dest="trace_export_subagents", action="store_false")
    for flag in ("--trace-eval-only", "--disable-verification"):
        p.add_argument(flag, action="store_true")
    for flag in ("--trace-agent-timeout-sec", "--trace-verifier-timeout-sec"):
        p.add_argument(flag, type=float)
    for name in ("cpu", "memory-gb", "disk-gb"):
        p.add_argument(f"--sandbox-{name}", f"--sandbox_{name.replace('-', '_')}", type=int)
    p.add_argument("--stage", choices=("tasks", "traces", "both"), default="tasks")
    p.add_argument("--num-tasks", type=int, default=8)
    p.add_argument("--fail", action="store_true")
    return p


def write_tasks(out: Path, n: int) -> int:
    """N deterministic arithmetic questions, DIR/task_0000/task.json ("What is three plus four?") onwards."""
    for i in range(n):
        op, a, b = list(OPS)[i % 3], (3 + i) % 11, (4 + 2 * i) % 11
        task = {"task_id": f"task_{i:04d}", "question": f"What is {WORDS[a]} {op} {WORDS[b]}?", "answer": OPS[op](a, b)}
        (out / task["task_id"]).mkdir(parents=True, exist_ok=True)
        (out / task["task_id"] / "task.json").write_text(json.dumps(task, indent=2) + "\n")
    return n


def read_tasks(tasks_input: Path) -> list[dict[str, Any]]:
    """The tasks in a directory: its task directories (DIR/task.json), else its task JSON files, sorted."""
    if not tasks_input.is_dir():
        raise Usage(f"--tasks-input {tasks_input} is not a directory")
    entries = sorted(p for p in tasks_input.iterdir() if not p.name.startswith("."))
    tasks = []
    for path in [p for p in entries if p.is_dir()] or [p for p in entries if p.suffix == ".json"]:
        file = path / "task.json" if path.is_dir() else path
        try:
            task = json.loads(file.read_text())
        except (OSError, ValueError) as exc:
            raise Failed(one_line(f"task {path}: {exc}")) from None
        task.setdefault("task_id", path.name if path.is_dir() else path.stem)
        tasks.append(task)
    return tasks


def load_config(path: str | None) -> dict[str, Any]:
    if not path:
        raise Usage("No engine configuration provided. Set --engine-config or export DATAGEN_CONFIG_PATH.")
    try:
        config = yaml.safe_load(Path(path).read_text()) or {}
        config["engine"]["type"] = str(config["engine"]["type"]).lower()
    except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
        raise Usage(one_line(f"--engine-config {path}: not an engine config ({exc})")) from None
    return config


def post(url: str, body: dict[str, Any], headers: dict[str, str], timeout: float) -> dict[str, Any]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise Failed(one_line(f"POST {url} -> HTTP {exc.code}: {exc.read(500).decode(errors='replace')}")) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise Failed(one_line(f"POST {url} failed: {getattr(exc, 'reason', None) or exc}")) from None


def _key(engine: dict[str, Any], provider: str, default_env: str) -> str | None:
    return os.environ.get((engine.get(provider) or {}).get("api_key_env") or default_env)


def engine_setup(args: argparse.Namespace, engine: dict[str, Any]) -> tuple[str, str, dict[str, str]]:
    """(request URL, model, headers) of the config's engine, checked before any request is made."""
    kind = engine["type"]
    model = args.trace_model.split("/", 1)[1] if args.trace_model and args.trace_model.startswith(f"{kind}/") \
        else engine.get("model") or args.trace_model
    if kind == "none":
        return "", model or "none", {}
    if kind == "vllm_local":
        local = engine.get("vllm_local") or {}
        endpoint_json = args.endpoint_json or os.environ.get("TRACE_ENDPOINT_JSON") or local.get("endpoint_json")
        if endpoint_json:
            try:
                endpoint = json.loads(Path(endpoint_json).read_text())
                base, model = str(endpoint["endpoint_url"]).rstrip("/"), endpoint["model_name"]
            except (OSError, ValueError, KeyError) as exc:
                raise Usage(one_line(f"endpoint JSON {endpoint_json}: {exc}")) from None
            base += f"/{str(endpoint['api_path']).strip('/')}" if endpoint.get("api_path") else ""
        elif local.get("base_url"):
            base, model = str(local["base_url"]).rstrip("/"), local.get("model_name") or model
        else:
            raise Usage("engine vllm_local needs --endpoint-json (or engine.vllm_local.endpoint_json / base_url)")
        base = base if base.endswith("/v1") else base + "/v1"
        key = os.environ.get(local["api_key_env"]) if local.get("api_key_env") else None
        return f"{base}/chat/completions", model, {"Authorization": f"Bearer {key}"} if key else {}
    if not model:
        raise Usage(f"engine {kind} needs engine.model (or --trace-model)")
    if kind == "anthropic":
        if not (key := _key(engine, "anthropic", "ANTHROPIC_API_KEY")):
            raise Usage("engine anthropic needs its API key in the environment (ANTHROPIC_API_KEY or api_key_env)")
        root = os.environ.get("ANTHROPIC_BASE_URL") or "https://api.anthropic.com"  # without /v1, as for the SDK
        return f"{root.rstrip('/')}/v1/messages", model, {"x-api-key": key, "anthropic-version": "2023-06-01"}
    if kind != "openai":
        raise Usage(f"engine {kind} is not supported by this example (use openai, anthropic, vllm_local or none)")
    base = os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
    key = _key(engine, "openai", "OPENAI_API_KEY")
    return f"{base.rstrip('/')}/chat/completions", model, {"Authorization": f"Bearer {key}"} if key else {}


class Tracer:
    """One chat completion per task, written atomically to DIR/<task_id>.json."""

    def __init__(self, args: argparse.Namespace, config: dict[str, Any], out: Path) -> None:
        engine = config["engine"]
        try:
            kwargs = json.loads(args.trace_agent_kwargs) if args.trace_agent_kwargs else \
                dict(config.get("extra_agent_kwargs") or {})
        except ValueError as exc:
            raise Usage(f"--trace-agent-kwargs is not JSON ({exc})") from None
        if not isinstance(kwargs, dict) or (args.trace_n_concurrent or 1) < 1:
            raise Usage("--trace-agent-kwargs must be a JSON object and --trace-n-concurrent at least 1")
        self.args, self.engine, self.kwargs, self.out = args, engine, kwargs, out
        self.url, self.model, self.headers = engine_setup(args, engine)
        self.params = {"max_tokens": engine.get("max_output_tokens") or 32, "temperature": 0,
                       **(engine.get("request_params") or {}),
                       **{k: v for k, v in kwargs.items() if k not in ("system_prompt", "timeout")}}

    def ask(self, messages: list[dict[str, str]]) -> tuple[str, Any, Any]:
        """(response text, model, usage) of one request to the engine."""
        kind = self.engine["type"]
        if kind == "none":
            return f"(echo) {messages[-1]['content']}", self.model, None
        body: dict[str, Any] = {"model": self.model, **self.params, "messages": messages}
        if kind == "anthropic":  # the system prompt as a top-level field
            system = {"system": messages[0]["content"]} if messages[0]["role"] == "system" else {}
            body = {**body, **system, "messages": [m for m in messages if m["role"] != "system"]}
        data = post(self.url, body, self.headers, self.kwargs.get("timeout", 120))
        try:
            text = ("".join(b["text"] for b in data["content"] if b.get("type") == "text") if kind == "anthropic"
                    else data["choices"][0]["message"]["content"] or "")
            return text, data.get("model", self.model), data.get("usage")
        except (KeyError, IndexError, TypeError, AttributeError):
            raise Failed(one_line(f"POST {self.url}: unexpected answer {json.dumps(data)}")) from None

    def trace(self, task: dict[str, Any]) -> None:
        prompt = self.kwargs.get("system_prompt")
        system = [{"role": "system", "content": prompt}] if prompt else []
        messages = [*system, {"role": "user", "content": task.get("question") or json.dumps(task)}]
        response, model, usage = self.ask(messages)
        a = self.args
        trace = {"task": task, "messages": messages, "response": response, "model": model,
                 "engine": self.engine["type"], "usage": usage,
                 "agent": {"name": a.trace_agent_name or "single_turn", "kwargs": self.kwargs, "env": a.trace_env,
                           "harbor_config": a.trace_harbor_config}}
        tmp = self.out / f".{task['task_id']}.json.tmp"
        tmp.write_text(json.dumps(trace, indent=2) + "\n")
        tmp.replace(self.out / f"{task['task_id']}.json")

    def run(self, tasks: list[dict[str, Any]]) -> int:
        self.out.mkdir(parents=True, exist_ok=True)
        pool = ThreadPoolExecutor(max_workers=self.args.trace_n_concurrent or 1)
        try:
            for done in as_completed([pool.submit(self.trace, t) for t in tasks]):
                done.result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)  # after a failure: drop queued tasks, finish running ones
        if self.args.trace_jobs_dir:
            jobs = Path(self.args.trace_jobs_dir)
            jobs.mkdir(parents=True, exist_ok=True)
            (jobs / "run.json").write_text(json.dumps({"tasks": len(tasks), "model": self.model,
                                                       "output_dir": str(self.out)}, indent=2) + "\n")
        return len(tasks)


def upload(folder: Path, repo: str, message: str) -> None:
    """DIR -> the private dataset repo REPO, in one commit (huggingface_hub reads HF_ENDPOINT and HF_TOKEN)."""
    try:
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(repo, repo_type="dataset", private=True, exist_ok=True)
        api.upload_folder(folder_path=folder, repo_id=repo, repo_type="dataset", commit_message=message,
                          ignore_patterns=[".*"])
    except Exception as exc:  # noqa: BLE001 - any client error is one error line
        raise Failed(one_line(f"upload of {folder} to dataset repo {repo} failed: {type(exc).__name__}: {exc}")) \
            from None


def run(args: argparse.Namespace) -> None:
    config = load_config(args.engine_config)
    if not args.output_dir:
        raise Usage(f"--stage {args.stage} needs --output-dir DIR")
    out = Path(args.output_dir)
    limit = args.limit if args.limit is not None else sys.maxsize
    if args.stage == "traces":
        if not args.tasks_input:
            raise Usage("--stage traces needs --tasks-input DIR")
        count = Tracer(args, config, out).run(read_tasks(Path(args.tasks_input))[:limit])
    elif args.stage == "tasks":
        count = write_tasks(out, min(args.num_tasks, limit))
    else:
        tracer = Tracer(args, config, out / "traces")
        write_tasks(out / "tasks", min(args.num_tasks, limit))
        count = tracer.run(read_tasks(out / "tasks"))
    print(f"generate.py: {args.stage}: wrote {count} to {out}")
    if args.target_repo and not args.no_upload:
        upload(out, args.target_repo, f"{args.stage}: {count} from generate.py")
        print(f"generate.py: {args.stage}: uploaded {out} to dataset repo {args.target_repo}")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.fail:
        print("generate.py: error: --fail given: failing on purpose", file=sys.stderr)
        return 3
    try:
        run(args)
    except (Usage, Failed) as exc:
        print(f"generate.py: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, Usage) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
