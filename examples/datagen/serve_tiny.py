#!/usr/bin/env python3
"""A small OpenAI-compatible chat server for a local causal LM on CPU: the local cluster's `vllm serve`.

    serve_tiny.py --model DIR --port PORT [--host 127.0.0.1] [--served-model-name NAME] [--max-new-tokens 32]
                  [--threads 1]

GET  /v1/models            {"object": "list", "data": [{"id": MODEL, "object": "model", ...}]}
POST /v1/chat/completions  {"model", "messages", "max_tokens", "temperature"} -> an OpenAI chat.completion
GET  /health               200 once the model is loaded (the socket only opens then, as with vLLM)

MODEL (the served name) is --served-model-name, else --model exactly as given, as with vLLM; requests naming
another model get 404.
A relative DIR is looked up from the current directory, then from the repo root. Decoding is always greedy
(temperature is accepted and ignored); max_tokens is capped at --max-new-tokens. Generation is serialized
(one lock), HTTP is threaded. Fully offline (local files only). SIGTERM/SIGINT shut down cleanly (exit 0).
One log line per request on stderr. `transformers serve` is not used: see README.md.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
REPO_ROOT = Path(__file__).resolve().parents[2]


def log(message: str) -> None:
    print(f"[serve_tiny {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.kind = status, kind


class Engine:
    """The model, its tokenizer and a lock: one generation at a time."""

    def __init__(self, model_dir: Path, name: str, max_new_tokens: int, threads: int) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        torch.set_num_threads(threads)  # a tiny model gains nothing from more, and they suffer on a shared node

        self.torch, self.name, self.max_new_tokens = torch, name, max_new_tokens
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True).eval()
        self.lock = threading.Lock()
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.tokenizer.eos_token_id is not None:
            self.eos_ids.add(self.tokenizer.eos_token_id)

    def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        if body.get("stream"):
            raise ApiError(400, "stream=true is not supported by serve_tiny")
        if body.get("model") not in (None, self.name):
            raise ApiError(404, f"The model `{body['model']}` does not exist (serving `{self.name}`)", "NotFoundError")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "messages must be a non-empty list")
        try:
            messages = [{"role": str(m["role"]), "content": _text(m.get("content"))} for m in messages]
            limit = int(body.get("max_tokens") or body.get("max_completion_tokens") or self.max_new_tokens)
        except (KeyError, TypeError, AttributeError, ValueError):
            raise ApiError(400, "malformed request: messages need a role, max_tokens an integer") from None
        limit = max(1, min(limit, self.max_new_tokens))
        prompt = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        inputs = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        n_prompt = int(inputs["input_ids"].shape[1])
        with self.lock, self.torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=limit, do_sample=False,
                                      pad_token_id=self.tokenizer.pad_token_id)
        new = out[0, n_prompt:].tolist()
        finish = "stop" if new and new[-1] in self.eos_ids else "length"
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": self.name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": finish, "logprobs": None}],
                "usage": {"prompt_tokens": n_prompt, "completion_tokens": len(new),
                          "total_tokens": n_prompt + len(new)}}


def _text(content: Any) -> str:
    """A message's content: a string, or OpenAI content parts (their text parts, joined)."""
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


class Handler(BaseHTTPRequestHandler):
    engine: Engine
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # replaced by one line per request in _reply
        pass

    def _reply(self, status: int, payload: dict[str, Any], started: float, note: str = "") -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        log(f"{self.client_address[0]} {self.command} {self.path} {status} {time.monotonic() - started:.3f}s{note}")

    def _error(self, exc: ApiError, started: float) -> None:
        self._reply(exc.status, {"error": {"message": str(exc), "type": exc.kind, "code": exc.status}}, started,
                    f" ({exc})")

    def do_GET(self) -> None:
        started = time.monotonic()
        path = self.path.split("?")[0].rstrip("/")
        if path == "/v1/models":
            self._reply(200, {"object": "list", "data": [{"id": self.engine.name, "object": "model",
                                                          "owned_by": "serve_tiny", "created": 0}]}, started)
        elif path == "/health":
            self._reply(200, {"status": "ok"}, started)
        else:
            self._error(ApiError(404, f"no route GET {path}", "NotFoundError"), started)

    def do_POST(self) -> None:
        started = time.monotonic()
        try:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path.split("?")[0].rstrip("/") != "/v1/chat/completions":
                raise ApiError(404, f"no route POST {self.path}", "NotFoundError")
            try:
                request = json.loads(body or b"{}")
            except ValueError:
                raise ApiError(400, "request body is not JSON") from None
            if not isinstance(request, dict):
                raise ApiError(400, "request body must be a JSON object")
            result = self.engine.chat(request)
        except ApiError as exc:
            return self._error(exc, started)
        except Exception as exc:  # a generation failure: answer 500, keep serving
            return self._error(ApiError(500, f"{type(exc).__name__}: {exc}", "InternalServerError"), started)
        usage = result["usage"]
        self._reply(200, result, started, f" prompt={usage['prompt_tokens']} completion={usage['completion_tokens']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="local model directory (also the served model name)")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--served-model-name", help="the name clients use (default: --model as given)")
    p.add_argument("--max-new-tokens", type=int, default=32, help="default and upper limit of max_tokens")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = p.parse_args(argv)
    model_dir = Path(args.model).expanduser()
    if not model_dir.is_dir() and not model_dir.is_absolute() and (REPO_ROOT / model_dir).is_dir():
        model_dir = REPO_ROOT / model_dir
    if not (model_dir / "config.json").is_file():
        p.error(f"--model {args.model}: no model directory (config.json) there")
    started = time.monotonic()
    name = args.served_model_name or args.model
    Handler.engine = Engine(model_dir, name, args.max_new_tokens, args.threads)
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True

    def stop(signum: int, _frame: Any) -> None:
        log(f"{signal.Signals(signum).name}: shutting down")
        threading.Thread(target=server.shutdown, daemon=True).start()  # shutdown() waits for serve_forever

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    host, port = server.server_address[:2]
    log(f"serving {name} ({model_dir}) at http://{host}:{port}/v1, loaded in {time.monotonic() - started:.1f}s")
    server.serve_forever()
    server.server_close()
    log("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
