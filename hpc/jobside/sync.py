"""Deferred uploads for runs whose compute nodes had no internet; run where the internet is.

    python -m hpc.sync EXPERIMENT_DIR      (on the login node), or the launch's follow-up sync job

Reads EXPERIMENT_DIR/configs/deferred.json, written by the launcher:
    {"uploads": [{"folder": DIR, "repo": "org/name", "repo_type": "model", "private": true,
                  "ignore": ["checkpoint-*"]},
                 {"folder": "DIR/chunk_{index:03d}", "repo": "org/name-chunk{index:03d}", "indices": "0-9999",
                  "repo_type": "dataset", "private": true}],
     "wandb_runs": [{"dir": WANDB_DIR, "run_id": ID}]}
An upload with "indices" (ranges such as "0-9999" or "0-4,7") stands for one upload per index, its
{index} filled in folder and repo (str.format), so deferred.json stays small however many chunks
a launch has. Finished items (each upload of a pattern on its own) are recorded in
EXPERIMENT_DIR/state/sync.json, so a second run retries only what failed. Self-contained (stdlib;
huggingface_hub and the wandb CLI only when there is work for them).

Every network wait is bounded: a Hub request without an answer for $HPC_LAUNCH_HUB_TIMEOUT seconds (default 60)
fails, and so does a `wandb sync` still running after $HPC_LAUNCH_WANDB_SYNC_TIMEOUT seconds (default 900).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

HUB_TIMEOUT_ENV, HUB_TIMEOUT = "HPC_LAUNCH_HUB_TIMEOUT", 60.0
WANDB_SYNC_TIMEOUT_ENV, WANDB_SYNC_TIMEOUT = "HPC_LAUNCH_WANDB_SYNC_TIMEOUT", 900.0
_UPLOAD_TEXT = ("folder", "repo", "repo_type", "indices", "message")
MAX_INDICES = 1_000_000  # chunks of one launch


class BadInput(ValueError):
    """deferred.json or state/sync.json is not what the launcher writes, or cannot be recorded: one line, exit 2."""


def log(message: str) -> None:
    print(f"[sync] {message}", flush=True)


def env_seconds(name: str, default: float) -> float:
    """A timeout from the environment variable `name` (seconds above 0), else `default`; ValueError if malformed."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise ValueError(f"{name}={text!r} is not a number of seconds above 0")
    return value


def bound_hub_requests(seconds: float) -> None:
    """Give every huggingface_hub request that has no timeout of its own one of `seconds` (to connect, per read)."""
    from huggingface_hub import get_session

    def bounded(request: object) -> None:
        timeout = request.extensions.get("timeout") or {}  # type: ignore[attr-defined]
        request.extensions["timeout"] = {key: seconds if timeout.get(key) is None else timeout[key]  # type: ignore
                                         for key in ("connect", "read", "write", "pool")}

    session = get_session()
    hooks = session.event_hooks
    kept = [hook for hook in hooks["request"] if getattr(hook, "__name__", "") != "bounded"]
    session.event_hooks = {**hooks, "request": [*kept, bounded]}


def index_ranges(indices: list[int]) -> str:
    """Indices as the "indices" of a pattern: [0, 1, 2, 5] -> "0-2,5"."""
    parts: list[str] = []
    ordered = sorted(indices)
    start = 0
    for i, index in enumerate(ordered):
        if i + 1 == len(ordered) or ordered[i + 1] != index + 1:
            first = ordered[start]
            parts.append(f"{first}-{index}" if index > first else f"{first}")
            start = i + 1
    return ",".join(parts)


def parse_indices(text: str) -> list[int]:
    """The indices of a pattern: "0-2,5" -> [0, 1, 2, 5]."""
    indices: list[int] = []
    for part in text.split(","):
        first, _, last = part.partition("-")
        start, stop = int(first), int(last or first) + 1
        if len(indices) + stop - start > MAX_INDICES:
            raise ValueError(f"more than {MAX_INDICES} indices")
        indices.extend(range(start, stop))
    return indices


def expand(item: dict) -> list[dict]:
    """An upload as recorded: itself, or, with "indices", one upload per index ({index} filled in)."""
    if "indices" not in item:
        return [item]
    rest = {k: v for k, v in item.items() if k != "indices"}
    return [{**rest, "folder": item["folder"].format(index=i), "repo": item["repo"].format(index=i)}
            for i in parse_indices(str(item["indices"]))]


def upload(item: dict) -> str:
    from huggingface_hub import HfApi

    folder = Path(item["folder"])
    if not folder.is_dir():
        raise RuntimeError(f"{folder} does not exist (did training finish?)")
    bound_hub_requests(env_seconds(HUB_TIMEOUT_ENV, HUB_TIMEOUT))
    api, kind = HfApi(), item.get("repo_type", "model")
    api.create_repo(item["repo"], repo_type=kind, private=item.get("private", True), exist_ok=True)
    info = api.upload_folder(folder_path=folder, repo_id=item["repo"], repo_type=kind,
                             ignore_patterns=item.get("ignore", []),
                             commit_message=item.get("message", "Upload from hpc-launch (deferred)"))
    return str(getattr(info, "commit_url", info))


def wandb_sync(item: dict) -> str:
    runs = sorted(Path(item["dir"]).glob(f"wandb/offline-run-*-{item['run_id']}"))
    if not runs:
        raise RuntimeError(f"no offline W&B run {item['run_id']} under {item['dir']}/wandb")
    wandb = shutil.which("wandb")
    if wandb is None:
        raise RuntimeError("the wandb command is not installed here")
    limit = env_seconds(WANDB_SYNC_TIMEOUT_ENV, WANDB_SYNC_TIMEOUT)
    log(f"wandb {item['run_id']}: syncing {len(runs)} run dir(s); giving up after {limit:g} s "
        f"(${WANDB_SYNC_TIMEOUT_ENV})")
    with subprocess.Popen([wandb, "sync", *map(str, runs)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, start_new_session=True) as proc:
        try:
            out, err = proc.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # wandb sync and the helpers it started
            proc.wait()
            raise RuntimeError(f"wandb sync did not finish within {limit:g} s (W&B unreachable?); set "
                               f"{WANDB_SYNC_TIMEOUT_ENV} to wait longer") from None
    if proc.returncode != 0:
        raise RuntimeError(f"wandb sync failed: {(err or out).strip().splitlines()[-1:]}")
    return f"{len(runs)} run dir(s) synced"


def _item_ok(item: object, text: tuple[str, ...]) -> bool:
    """An upload or W&B run: its first two text fields present, every text field text, private a bool, ignore a list
    of patterns."""
    return (isinstance(item, dict) and all(key in item for key in text[:2])
            and all(isinstance(item.get(key, ""), str) for key in text)
            and isinstance(item.get("private", True), bool)
            and isinstance(item.get("ignore", []), list) and all(isinstance(p, str) for p in item.get("ignore", [])))


def check_records(plan: object, done: object, where: Path) -> tuple[dict, dict]:
    """deferred.json's plan and state/sync.json's finished items as the launcher writes them; BadInput otherwise."""
    fix = "it is written by hpc-launch: restore it or launch again"
    if not isinstance(plan, dict) or set(plan) - {"uploads", "wandb_runs"}:
        raise BadInput(f"{where / 'configs/deferred.json'} must be a JSON object with uploads and wandb_runs; {fix}")
    for kind, text in (("uploads", _UPLOAD_TEXT), ("wandb_runs", ("dir", "run_id"))):
        items = plan.get(kind, [])
        if not isinstance(items, list) or not all(_item_ok(item, text) for item in items):
            raise BadInput(f"{where / 'configs/deferred.json'}: {kind} must be a list of objects with the text "
                           f"fields {', '.join(text[:2])}; {fix}")
    try:
        for item in plan.get("uploads", []):
            expand(item)
    except (ValueError, KeyError, IndexError, AttributeError, TypeError) as exc:
        raise BadInput(f"{where / 'configs/deferred.json'}: a pattern upload cannot be expanded ({exc}); {fix}") from None
    if not isinstance(done, dict) or not all(isinstance(v, str) for v in done.values()):
        raise BadInput(f"{where / 'state/sync.json'} must map finished items to their results; delete it to sync "
                       "everything again")
    return plan, done


def _read_records(experiment_dir: Path) -> tuple[dict | None, dict]:
    """(deferred.json's plan or None, state/sync.json's finished items), checked; BadInput for what is unreadable."""
    plan_path, state_path = experiment_dir / "configs" / "deferred.json", experiment_dir / "state" / "sync.json"
    if not plan_path.is_file():
        return None, {}
    try:
        plan = json.loads(plan_path.read_text(encoding="utf-8"))
        done = json.loads(state_path.read_text(encoding="utf-8")) if state_path.is_file() else {}
    except (OSError, ValueError, RecursionError) as exc:
        raise BadInput(f"cannot read the sync records of {experiment_dir} ({type(exc).__name__}: {exc})") from None
    return check_records(plan, done, experiment_dir)


def run(experiment_dir: Path, records: tuple[dict | None, dict] | None = None) -> int:
    """Do what is deferred and not yet done; `records` (plan, done) as check_records returns them, else read here."""
    plan, done = records or _read_records(experiment_dir)
    if plan is None:
        log(f"nothing deferred for {experiment_dir}")
        return 0
    state_path = experiment_dir / "state" / "sync.json"
    failures = 0
    work = [(f"upload {u['repo']}", upload, u) for item in plan.get("uploads", []) for u in expand(item)]
    work += [(f"wandb {w['run_id']}", wandb_sync, w) for w in plan.get("wandb_runs", [])]
    for key, action, item in work:
        if key in done:
            log(f"{key}: already done ({done[key]})")
            continue
        try:
            done[key] = action(item)
            log(f"{key}: done ({done[key]})")
        except Exception as exc:  # report every failure, keep going, retry on the next run
            failures += 1
            log(f"{key}: FAILED: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        try:
            state_path.parent.mkdir(parents=True, exist_ok=True)
            state_path.write_text(json.dumps(done, indent=2) + "\n")
        except OSError as exc:
            raise BadInput(f"cannot record progress in {state_path} ({exc.strerror}); make it writable") from None
    log(f"{len(work) - failures} of {len(work)} deferred item(s) done" + ("; run again to retry" if failures else ""))
    return 1 if failures else 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: sync.py EXPERIMENT_DIR")
    try:
        sys.exit(run(Path(sys.argv[1])))
    except BadInput as error:
        print(f"sync.py: error: {error}", file=sys.stderr)
        sys.exit(2)
