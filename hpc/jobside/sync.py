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
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path


def log(message: str) -> None:
    print(f"[sync] {message}", flush=True)


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
        indices.extend(range(int(first), int(last or first) + 1))
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
    proc = subprocess.run([wandb, "sync", *map(str, runs)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"wandb sync failed: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
    return f"{len(runs)} run dir(s) synced"


def run(experiment_dir: Path) -> int:
    plan_path = experiment_dir / "configs" / "deferred.json"
    if not plan_path.is_file():
        log(f"nothing deferred for {experiment_dir}")
        return 0
    plan = json.loads(plan_path.read_text())
    state_path = experiment_dir / "state" / "sync.json"
    done = json.loads(state_path.read_text()) if state_path.is_file() else {}
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
        state_path.parent.mkdir(parents=True, exist_ok=True)
        state_path.write_text(json.dumps(done, indent=2) + "\n")
    log(f"{len(work) - failures} of {len(work)} deferred item(s) done" + ("; run again to retry" if failures else ""))
    return 1 if failures else 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: sync.py EXPERIMENT_DIR")
    sys.exit(run(Path(sys.argv[1])))
