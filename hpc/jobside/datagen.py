"""Job-side helpers of data generation (copied into each experiment; stdlib only).

    datagen.py tasks-of DIR                                  print the sorted task list (one path per line)
    datagen.py chunk --tasks DIR --index I --num-chunks N --out CHUNK_DIR
        make CHUNK_DIR a directory of symlinks to chunk I's tasks (no copies), print their number: tasks
        are split into N contiguous, balanced parts
    datagen.py serve-ready --url URL --timeout S --pid PID   wait until GET URL/models answers 200; fail
        at once if the server process PID exits first
    datagen.py publish --file F --url URL --model NAME
        write the endpoint JSON F atomically: {"model_name", "endpoint_url", "job_id", ...}
    datagen.py wait-endpoint --file F --server-name NAME --timeout S
        wait for the server job's endpoint JSON and a healthy GET <endpoint_url>/v1/models; print the URL.
        Fails at once when the server job is no longer queued or running, and after S seconds otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def task_names(tasks: Path) -> list[str]:
    """Tasks are the sorted, non-hidden subdirectories of DIR, or its files when it has none (their names; the
    directory entries' types spare a stat per task, except for symlinks)."""
    dirs, files = [], []
    with os.scandir(tasks) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                dirs.append(entry.name)
            elif entry.is_file():
                files.append(entry.name)
    return sorted(dirs or files)


def task_list(tasks: Path) -> list[Path]:
    """The tasks of DIR (see task_names) as paths."""
    return [tasks / name for name in task_names(tasks)]


def chunk_bounds(n: int, index: int, num_chunks: int) -> tuple[int, int]:
    """[start, end) of chunk `index` when n tasks are split into num_chunks balanced contiguous parts."""
    return index * n // num_chunks, (index + 1) * n // num_chunks


def api_base(endpoint: dict) -> str:
    """The OpenAI-compatible base of an endpoint JSON: endpoint_url [+ api_path] + /v1."""
    url = str(endpoint["endpoint_url"]).rstrip("/")
    if endpoint.get("api_path"):
        url += "/" + str(endpoint["api_path"]).strip("/")
    return url if url.endswith("/v1") else url + "/v1"


def link_chunk(tasks: list[Path], out: Path) -> None:
    """OUT holds a symlink per task (named as the task) and nothing else; stale links are removed."""
    out.mkdir(parents=True, exist_ok=True)
    names = {t.name for t in tasks}
    for entry in out.iterdir():
        if entry.is_symlink() and entry.name not in names:
            entry.unlink()
    for task in tasks:
        link = out / task.name
        if link.is_symlink() and os.readlink(link) != str(task.absolute()):
            link.unlink()
        if not link.is_symlink():
            link.symlink_to(task.absolute())


def publish(file: Path, url: str, model: str) -> None:
    endpoint = {"model_name": model, "endpoint_url": url, "job_id": os.environ.get("SLURM_JOB_ID"),
                "created_by": "hpc-launch", "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(file.name + ".tmp")
    tmp.write_text(json.dumps(endpoint, indent=2) + "\n")
    tmp.replace(file)


def healthy(url: str) -> bool:
    import urllib.error  # here, not at the top: the launcher imports this module for task_names
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/models", timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return True


def server_state(name: str) -> str:
    out = subprocess.run(["squeue", "-h", "--me", "-n", name, "-o", "%T"], capture_output=True, text=True)
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else "GONE"


def wait_endpoint(file: Path, server_name: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        if file.is_file():
            url = api_base(json.loads(file.read_text()))
            if healthy(url):
                return url
        state = server_state(server_name)
        if state not in ("PENDING", "RUNNING", "CONFIGURING"):
            raise SystemExit(f"datagen: error: inference server job {server_name} is {state} without a healthy "
                             f"endpoint; see its log in {file.parent.parent / 'logs'}")
        if time.monotonic() > deadline:
            raise SystemExit(f"datagen: error: inference server job {server_name} ({state}) gave no healthy "
                             f"endpoint within {timeout:.0f} s")
        time.sleep(2)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="datagen.py")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("tasks-of").add_argument("tasks", type=Path)
    c = sub.add_parser("chunk")
    c.add_argument("--tasks", type=Path, required=True)
    c.add_argument("--index", type=int, required=True)
    c.add_argument("--num-chunks", type=int, required=True)
    c.add_argument("--out", type=Path, required=True)
    b = sub.add_parser("publish")
    b.add_argument("--file", type=Path, required=True)
    b.add_argument("--url", required=True)
    b.add_argument("--model", required=True)
    r = sub.add_parser("serve-ready")
    r.add_argument("--url", required=True)
    r.add_argument("--timeout", type=float, required=True)
    r.add_argument("--pid", type=int, required=True)
    w = sub.add_parser("wait-endpoint")
    w.add_argument("--file", type=Path, required=True)
    w.add_argument("--server-name", required=True)
    w.add_argument("--timeout", type=float, required=True)
    args = p.parse_args(argv)
    if args.cmd == "tasks-of":
        print("\n".join(map(str, task_list(args.tasks))))
    elif args.cmd == "chunk":
        if not args.tasks.is_dir():
            raise SystemExit(f"datagen: error: task directory {args.tasks} does not exist")
        names = task_names(args.tasks)
        start, end = chunk_bounds(len(names), args.index, args.num_chunks)
        link_chunk([args.tasks / name for name in names[start:end]], args.out)
        print(end - start)
    elif args.cmd == "publish":
        publish(args.file, args.url, args.model)
    elif args.cmd == "serve-ready":
        deadline = time.monotonic() + args.timeout
        while not healthy(args.url):
            if not Path(f"/proc/{args.pid}").exists() or _zombie(args.pid):
                raise SystemExit(f"datagen: error: the server process exited before {args.url} answered")
            if time.monotonic() > deadline:
                raise SystemExit(f"datagen: error: server at {args.url} not healthy after {args.timeout:.0f} s")
            time.sleep(1)
    else:
        print(wait_endpoint(args.file, args.server_name, args.timeout))
    return 0


if __name__ == "__main__":
    sys.exit(main())
