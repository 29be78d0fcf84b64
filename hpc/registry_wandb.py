"""W&B run metadata for the model registry, read with the public API (`wandb.Api`, imported lazily).

`wandb.Api` honours WANDB_BASE_URL (self-hosted W&B, or a loopback stand-in in tests) and sends GraphQL
to `<base>/graphql` (through the wandb-core helper process it starts): `Viewer` to check the key,
`GetDefaultEntity`, then `Run` with {entity, project, name}. What the registry takes from the run:
createdAt (training start), the end (createdAt + summary `_runtime`, else heartbeatAt, once the run
is no longer running), state, config and the run's URL.
"""

from __future__ import annotations

import os
import threading
from dataclasses import field
from datetime import datetime, timedelta, timezone
from typing import Any

from hpc.records import record

#: Run states after which the run has an end time.
ENDED = ("finished", "crashed", "failed", "killed")


@record(eq=True)
class WandbRun:
    """What the registry needs from one W&B run."""

    path: str  # entity/project/run_id
    url: str | None
    state: str | None
    started: str | None  # ISO 8601, UTC
    ended: str | None
    config: dict[str, Any] = field(default_factory=dict)


def to_utc(value: object) -> datetime | None:
    """A W&B timestamp ("2026-11-20T10:00:00", naive = UTC, or with Z/offset) as an aware datetime."""
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(str(value).strip())
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def run_times(attrs: dict[str, Any], summary: dict[str, Any]) -> tuple[str | None, str | None]:
    """(start, end) as ISO strings from a run's GraphQL attributes and summary metrics."""
    start = to_utc(attrs.get("createdAt"))
    end = None
    if str(attrs.get("state", "")).lower() in ENDED:
        runtime = summary.get("_runtime")
        if start and isinstance(runtime, (int, float)) and runtime >= 0:
            end = start + timedelta(seconds=float(runtime))
        else:
            end = to_utc(attrs.get("heartbeatAt"))
    return (start.isoformat() if start else None, end.isoformat() if end else None)


def fetch_run(entity: str | None, project: str, run_id: str, api_key: str, timeout: float = 30) -> WandbRun:
    """Read one run; `entity` None means the key's default entity. Raises RuntimeError (one line, no key)."""
    try:
        import wandb
    except ImportError:
        raise RuntimeError("the wandb package is not installed: pip install 'hpc-launch[registry]'") from None
    os.environ.setdefault("WANDB_ERROR_REPORTING", "false")  # no crash reports to sentry from here
    path = "/".join(p for p in (entity, project, run_id) if p)
    answer: dict[str, Any] = {}

    def ask() -> None:
        try:
            run = wandb.Api(api_key=api_key, timeout=timeout).run(path)
            answer["run"] = (dict(run._attrs), dict(run.summary_metrics or {}), dict(run.config or {}), run.url,
                             "/".join(run.path))
        except Exception as exc:  # wandb raises CommError, AuthenticationError, ValueError, ...
            answer["error"] = " ".join(str(exc).split()) or type(exc).__name__

    # wandb retries a silent server well past its own timeout: the whole lookup gets a deadline of its own.
    worker = threading.Thread(target=ask, daemon=True)
    worker.start()
    worker.join(3 * timeout + 10)
    if "run" not in answer:
        detail = answer.get("error") or f"no answer within {3 * timeout + 10:.0f} s (W&B unreachable?)"
        raise RuntimeError(f"W&B run {path}: {detail}")
    attrs, summary, config, url, resolved = answer["run"]
    started, ended = run_times(attrs, summary)
    return WandbRun(path=resolved, url=url, state=attrs.get("state"), started=started, ended=ended, config=config)
