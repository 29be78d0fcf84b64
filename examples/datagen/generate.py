#!/usr/bin/env python3
"""Example generator for hpc-launch datagen: arithmetic questions (tasks), one chat completion each (traces).

Generator interface (the launcher calls it so):
```
generate.py --stage tasks  --output-dir DIR [--target-repo REPO] [--engine ENGINE] [--model MODEL] [--endpoint URL] [EXTRA...]
    Writes one subdirectory per task into DIR (DIR/<task_id>/task.json). Uploads DIR to the dataset repo REPO when given.
generate.py --stage traces --tasks-list FILE --output-dir DIR [--target-repo REPO] [--engine ENGINE] [--model MODEL]
            [--endpoint URL] [--agent-name NAME] [--agent-kwargs JSON] [--n-concurrent N] [--env ENV]
            [--harbor-config FILE] [EXTRA...]
    FILE lists the task directories of this chunk, one path per line. For each task, asks the model (OpenAI-compatible
    chat completion at URL, the server's /v1 base) and writes DIR/<task_id>.json (task, messages, response, model,
    agent). Uploads DIR to the dataset repo REPO when given (a private dataset repo, one commit).
Engines: vllm_local / openai (OpenAI-compatible HTTP at --endpoint, or OPENAI_BASE_URL; key from OPENAI_API_KEY if set),
anthropic (not needed to run here: exit 2 with a clear message if no ANTHROPIC_API_KEY), none (no model: traces echo the task).
```
Example-specific EXTRA (the launcher passes EXTRA to both stages): --num-tasks N (tasks stage: N arithmetic
questions, ids task_0000..; default 8), --fail (exit 3 at once, for failure tests).
--agent-kwargs keys: system_prompt, timeout (s, default 120), anything else goes into the request (max_tokens: 32
and temperature: 0 by default). --env and --harbor-config are recorded in each trace, not used.
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

ENGINES = ("vllm_local", "openai", "anthropic", "none")
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


def write_tasks(out: Path, n: int) -> int:
    """N deterministic arithmetic questions, DIR/task_0000/task.json ("What is three plus four?") onwards."""
    for i in range(n):
        op, a, b = list(OPS)[i % 3], (3 + i) % 11, (4 + 2 * i) % 11
        task = {"task_id": f"task_{i:04d}", "question": f"What is {WORDS[a]} {op} {WORDS[b]}?", "answer": OPS[op](a, b)}
        (out / task["task_id"]).mkdir(parents=True, exist_ok=True)
        (out / task["task_id"] / "task.json").write_text(json.dumps(task, indent=2) + "\n")
    return n


def read_tasks(list_file: Path) -> list[dict[str, Any]]:
    """The tasks named in FILE: task directories (DIR/task.json) or task JSON files."""
    tasks = []
    for line in list_file.read_text().splitlines():
        if not (entry := line.strip()):
            continue
        path = Path(entry)
        file = path / "task.json" if path.is_dir() else path
        try:
            task = json.loads(file.read_text())
        except (OSError, ValueError) as exc:
            raise Failed(one_line(f"task {entry} (from {list_file}): {exc}")) from None
        task.setdefault("task_id", path.name if path.is_dir() else path.stem)
        tasks.append(task)
    return tasks


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


def engine_setup(args: argparse.Namespace) -> tuple[str, dict[str, str]]:
    """The request URL and headers of the engine (checked before any request is made)."""
    if args.engine == "none":
        return "", {}
    if not args.model:
        raise Usage(f"--engine {args.engine} needs --model")
    if args.engine == "anthropic":
        if not (key := os.environ.get("ANTHROPIC_API_KEY")):
            raise Usage("--engine anthropic needs ANTHROPIC_API_KEY in the environment (not set)")
        root = os.environ.get("ANTHROPIC_BASE_URL") or "https://api.anthropic.com"  # without /v1, as for the SDK
        base = args.endpoint or root.rstrip("/") + "/v1"
        return f"{base.rstrip('/')}/messages", {"x-api-key": key, "anthropic-version": "2023-06-01"}
    if not (base := args.endpoint or os.environ.get("OPENAI_BASE_URL")):
        raise Usage(f"--engine {args.engine} needs --endpoint URL (the server's /v1 base) or OPENAI_BASE_URL")
    key = os.environ.get("OPENAI_API_KEY")
    return f"{base.rstrip('/')}/chat/completions", {"Authorization": f"Bearer {key}"} if key else {}


def ask(args: argparse.Namespace, url: str, headers: dict[str, str], kwargs: dict[str, Any],
        messages: list[dict[str, str]]) -> tuple[str, Any, Any]:
    """(response text, model, usage) of one request to the engine."""
    if args.engine == "none":
        return f"(echo) {messages[-1]['content']}", args.model, None
    body = {"model": args.model, "max_tokens": 32, "temperature": 0,
            **{k: v for k, v in kwargs.items() if k not in ("system_prompt", "timeout")}}
    if args.engine == "anthropic":  # system prompt as a top-level field
        system = {"system": messages[0]["content"]} if messages[0]["role"] == "system" else {}
        body = {**body, **system, "messages": [m for m in messages if m["role"] != "system"]}
    data = post(url, {"messages": messages, **body}, headers, kwargs.get("timeout", 120))
    try:
        text = ("".join(b["text"] for b in data["content"] if b.get("type") == "text") if args.engine == "anthropic"
                else data["choices"][0]["message"]["content"] or "")
        return text, data.get("model", args.model), data.get("usage")
    except (KeyError, IndexError, TypeError, AttributeError):
        raise Failed(one_line(f"POST {url}: unexpected answer {json.dumps(data)}")) from None


def trace_one(args: argparse.Namespace, url: str, headers: dict[str, str], kwargs: dict[str, Any],
              task: dict[str, Any]) -> None:
    """One chat completion for one task, written atomically to DIR/<task_id>.json."""
    system = [{"role": "system", "content": kwargs["system_prompt"]}] if kwargs.get("system_prompt") else []
    messages = [*system, {"role": "user", "content": task.get("question") or json.dumps(task)}]
    response, model, usage = ask(args, url, headers, kwargs, messages)
    trace = {"task": task, "messages": messages, "response": response, "model": model, "engine": args.engine,
             "usage": usage, "agent": {"name": args.agent_name, "kwargs": kwargs, "env": args.env,
                                       "harbor_config": args.harbor_config}}
    tmp = args.output_dir / f".{task['task_id']}.json.tmp"
    tmp.write_text(json.dumps(trace, indent=2) + "\n")
    tmp.replace(args.output_dir / f"{task['task_id']}.json")


def write_traces(args: argparse.Namespace) -> int:
    if args.tasks_list is None:
        raise Usage("--stage traces needs --tasks-list FILE")
    try:
        kwargs = json.loads(args.agent_kwargs)
    except ValueError as exc:
        raise Usage(f"--agent-kwargs is not JSON ({exc})") from None
    if not isinstance(kwargs, dict) or args.n_concurrent < 1:
        raise Usage("--agent-kwargs must be a JSON object and --n-concurrent at least 1")
    url, headers = engine_setup(args)
    tasks = read_tasks(args.tasks_list)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    pool = ThreadPoolExecutor(max_workers=args.n_concurrent)
    try:
        for done in as_completed([pool.submit(trace_one, args, url, headers, kwargs, t) for t in tasks]):
            done.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # after a failure: drop queued tasks, finish running ones
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="hpc-launch example generator (see the module docstring)")
    p.add_argument("--stage", choices=("tasks", "traces"), required=True)
    p.add_argument("--output-dir", type=Path, required=True)
    p.add_argument("--tasks-list", type=Path)
    p.add_argument("--engine", choices=ENGINES, default="vllm_local")
    for flag in ("--target-repo", "--model", "--endpoint", "--env", "--harbor-config"):
        p.add_argument(flag)
    p.add_argument("--agent-name", default="single_turn")
    p.add_argument("--agent-kwargs", default="{}")
    p.add_argument("--n-concurrent", type=int, default=1)
    p.add_argument("--num-tasks", type=int, default=8)
    p.add_argument("--fail", action="store_true")
    args = p.parse_args(argv)
    if args.fail:
        print("generate.py: error: --fail given: failing on purpose", file=sys.stderr)
        return 3
    try:
        count = write_tasks(args.output_dir, args.num_tasks) if args.stage == "tasks" else write_traces(args)
        print(f"generate.py: {args.stage}: wrote {count} to {args.output_dir}")
        if args.target_repo:
            upload(args.output_dir, args.target_repo, f"{args.stage}: {count} from generate.py")
            print(f"generate.py: {args.stage}: uploaded {args.output_dir} to dataset repo {args.target_repo}")
    except (Usage, Failed) as exc:
        print(f"generate.py: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, Usage) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
