"""Loopback stand-in for the W&B GraphQL endpoint.

``WandbStandIn``: the W&B GraphQL endpoint (``POST /graphql``) as ``wandb.Api`` 0.31 uses it through
wandb-core: ``Viewer`` (key check, ``Authorization: Basic base64("api:<key>")``), ``GetDefaultEntity`` and
``Run`` (``project(name, entityName) { run(name) {...RunFragment} }``). Point clients at it with ``env()``.
Every request is recorded (see loopback_server.LoopbackServer).
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

from loopback_server import LoopbackServer, Recorded


def wandb_run_attrs(run_id: str, created_at: str, state: str = "finished", runtime: float | None = None,
                    config: dict | None = None, heartbeat_at: str | None = None, display_name: str = "run") -> dict:
    """A run as W&B's GraphQL `RunFragment` returns it (config and summaryMetrics are JSON strings)."""
    summary = {"_runtime": runtime} if runtime is not None else {}
    return {
        "projectId": "1", "id": base64.b64encode(f"Run:v1:{run_id}".encode()).decode(), "name": run_id,
        "displayName": display_name, "state": state, "createdAt": created_at, "heartbeatAt": heartbeat_at or created_at,
        "config": json.dumps({k: {"value": v, "desc": None} for k, v in (config or {}).items()}),
        "summaryMetrics": json.dumps(summary), "systemMetrics": "{}", "tags": [], "sweepName": None, "group": None,
        "jobType": None, "commit": None, "readOnly": False, "description": None, "notes": None,
        "historyLineCount": 0, "user": {"name": "Alice", "username": "alice"}, "historyKeys": None,
    }


class WandbStandIn(LoopbackServer):
    """W&B's GraphQL API for ``wandb.Api().run(path)``; runs keyed by (entity, project, run id)."""

    def __init__(self, api_key: str = "k" * 40, default_entity: str = "my-team") -> None:
        self.api_key, self.default_entity = api_key, default_entity
        self.runs: dict[tuple[str, str, str], dict] = {}
        super().__init__()

    def add_run(self, entity: str, project: str, run_id: str, **attrs: Any) -> None:
        self.runs[(entity, project, run_id)] = wandb_run_attrs(run_id, **attrs)

    def env(self, home: Path) -> dict[str, str]:
        """Environment for a process using wandb.Api against this stand-in (and nothing else)."""
        return {"WANDB_BASE_URL": self.url, "WANDB_API_KEY": self.api_key, "WANDB_ERROR_REPORTING": "false",
                "WANDB_DIR": str(home / "wandb"), "WANDB_CACHE_DIR": str(home / "wandb-cache"),
                "WANDB_CONFIG_DIR": str(home / "wandb-config"), "HOME": str(home)}

    def graphql(self) -> list[dict]:
        """The GraphQL payloads received, in order."""
        return [r.body for r in self.requests if r.path == "/graphql"]

    def handle(self, method, path, headers, body):
        payload = json.loads(body) if body else {}
        self.requests.append(Recorded(method, path, [], headers, payload))
        expected = "Basic " + base64.b64encode(f"api:{self.api_key}".encode()).decode()
        if headers.get("authorization") != expected:
            return 401, {"Content-Type": "application/json"}, b'{"errors":[{"message":"user is not logged in"}]}'
        query, variables = payload.get("query", ""), payload.get("variables") or {}
        if path != "/graphql" or method != "POST":
            data, errors = None, [{"message": f"stand-in: no route {method} {path}"}]
        elif re.search(r"query\s+Run\(", query):
            run = self.runs.get((variables.get("entity"), variables.get("project"), variables.get("name")))
            data, errors = {"project": {"run": run}}, None
        elif "viewer" in query:
            data = {"viewer": {"id": "VXNlcjox", "entity": self.default_entity, "username": "alice",
                               "email": "alice@example.invalid", "flags": None, "teams": {"edges": []}}}
            errors = None
        else:
            data, errors = None, [{"message": "stand-in: unsupported query"}]
        reply = {"data": data} | ({"errors": errors} if errors else {})
        return 200, {"Content-Type": "application/json"}, json.dumps(reply).encode()

