"""Loopback stand-ins for the model registry's services, and a throw-away PostgreSQL server.

* ``PostgrestStandIn``: speaks the part of PostgREST's wire format (Supabase's ``/rest/v1``) that supabase-py
  uses for the registry: ``POST /rest/v1/<table>[?on_conflict=c]`` with ``Prefer: resolution=merge-duplicates|
  ignore-duplicates, return=representation|minimal`` and a JSON object or array; ``GET /rest/v1/<table>?select=*
  &col=eq.value``. Keys: ``apikey`` and ``Authorization: Bearer`` must both carry its key, else 401 like
  Supabase. Errors are PostgREST's ``{code, message, details, hint}`` bodies; ``fail_next`` queues any answer.
  Every request is recorded (method, path, query, headers, parsed body). Rows live in memory (columns and
  unique names taken from hpc/registry_schema.sql), or, with ``dsn=``, in a real PostgreSQL: each request
  becomes the SQL PostgREST would run (``INSERT ... SELECT ... FROM json_populate_recordset(NULL::t, $1)
  ON CONFLICT (c) DO UPDATE SET <each given column> = EXCLUDED.<column> RETURNING to_json(t.*)``).
  Not PostgREST itself (no PostgREST server can be had here): its request/response contract plus real SQL.
* ``WandbStandIn``: the W&B GraphQL endpoint (``POST /graphql``) as ``wandb.Api`` 0.31 uses it through
  wandb-core: ``Viewer`` (key check, ``Authorization: Basic base64("api:<key>")``), ``GetDefaultEntity`` and
  ``Run`` (``project(name, entityName) { run(name) {...RunFragment} }``). Point clients at it with ``env()``.
* ``PostgresServer``: Debian's PostgreSQL 15 in a temp dir, as the ``postgres`` user when run as root
  (initdb refuses root), unix socket only (no TCP), fsync off; ``database()`` makes a fresh database.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from hpc import ROOT

SCHEMA_SQL = ROOT / "hpc" / "registry_schema.sql"
_IDENT = re.compile(r"[a-z_][a-z0-9_]*")


@dataclass
class Recorded:
    method: str
    path: str
    query: list[tuple[str, str]]
    headers: dict[str, str]  # lower-case names
    body: Any


class StandInError(Exception):
    """An error answer in PostgREST's shape."""

    def __init__(self, status: int, code: str | None, message: str, details: str | None = None,
                 hint: str | None = None) -> None:
        super().__init__(message)
        self.status, self.body = status, {"code": code, "details": details, "hint": hint, "message": message}


class _Server:
    """A threaded loopback HTTP server; ``handle(method, path, headers, body)`` returns (status, headers, bytes)."""

    def __init__(self) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                lowered = {k.lower(): v for k, v in self.headers.items()}
                status, headers, data = owner.handle(self.command, self.path, lowered, body)
                self.send_response(status)
                for key, value in {**headers, "Content-Length": str(len(data))}.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_DELETE = do_HEAD = _any

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.requests: list[Recorded] = []
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict, bytes]:
        raise NotImplementedError

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def schema_tables(sql: str | None = None) -> dict[str, list[str]]:
    """Table -> column names, read from the CREATE TABLE statements of hpc/registry_schema.sql."""
    tables = {}
    for name, body in re.findall(r"create table if not exists (\w+) \((.*?)\n\);", sql or SCHEMA_SQL.read_text(), re.S):
        lines = [line.strip() for line in body.splitlines()]
        tables[name] = [line.split()[0] for line in lines if line and not line.startswith("--")]
    return tables


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


class MemoryBackend:
    """Tables in memory: generated uuid ids, unique names, created_at/updated_at like the schema's defaults."""

    def __init__(self) -> None:
        self.columns = schema_tables()
        self.tables: dict[str, list[dict[str, Any]]] = {t: [] for t in self.columns}

    def _check(self, table: str, rows: list[dict]) -> None:
        if table not in self.columns:
            raise StandInError(404, "PGRST205", f"Could not find the table 'public.{table}' in the schema cache")
        for row in rows:
            for col in row:
                if col not in self.columns[table]:
                    raise StandInError(400, "PGRST204",
                                       f"Could not find the '{col}' column of '{table}' in the schema cache")
            if not row.get("name"):
                raise StandInError(400, "23502", 'null value in column "name" violates not-null constraint')

    def upsert(self, table: str, rows: list[dict], on_conflict: str | None, resolution: str | None) -> list[dict]:
        self._check(table, rows)
        out = []
        for row in rows:
            key = on_conflict or "id"
            found = next((r for r in self.tables[table] if key in row and r.get(key) == row[key]), None)
            if found and not resolution:
                raise StandInError(409, "23505", f'duplicate key value violates unique constraint "{table}_{key}_key"',
                                   f"Key ({key})=({row[key]}) already exists.")
            if found and resolution == "ignore-duplicates":
                continue
            if found:
                if any(found.get(k) != v for k, v in row.items()):
                    found.update(row, updated_at=_now())
                out.append(dict(found))
            else:
                stamp = _now()
                new = {c: None for c in self.columns[table]} | {"id": str(uuid.uuid4()), "created_at": stamp,
                                                                 "updated_at": stamp} | row
                self.tables[table].append(new)
                out.append(dict(new))
        return out

    def select(self, table: str, filters: list[tuple[str, str]]) -> list[dict]:
        self._check(table, [])
        return [dict(r) for r in self.tables[table] if all(str(r.get(c)) == v for c, v in filters)]


class PostgresBackend:
    """Each request becomes the SQL PostgREST would run, in one transaction on a real PostgreSQL."""

    STATUS = {"23505": 409, "23503": 409, "42P01": 404, "42501": 403}

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    def _run(self, query: Any, params: tuple = ()) -> list[dict]:
        import psycopg

        try:
            with psycopg.connect(self.dsn) as conn:  # commits on success, rolls back on error
                return [row[0] for row in conn.execute(query, params).fetchall()]
        except psycopg.Error as exc:
            diag = exc.diag
            code = diag.sqlstate or "XX000"
            raise StandInError(self.STATUS.get(code, 400), code, diag.message_primary or str(exc),
                               diag.message_detail, diag.message_hint) from None

    def upsert(self, table: str, rows: list[dict], on_conflict: str | None, resolution: str | None) -> list[dict]:
        from psycopg import sql

        cols = list(dict.fromkeys(c for row in rows for c in row))
        for name in [table, *cols, on_conflict or "id"]:
            if not _IDENT.fullmatch(name):
                raise StandInError(400, "PGRST100", f"stand-in: unsupported identifier {name!r}")
        t, names = sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, cols))
        query = sql.SQL("INSERT INTO {t} ({c}) SELECT {c} FROM json_populate_recordset(NULL::{t}, %s::json)")
        query = query.format(t=t, c=names)
        if resolution:
            target = sql.Identifier(on_conflict or "id")
            if resolution == "ignore-duplicates":
                query += sql.SQL(" ON CONFLICT ({k}) DO NOTHING").format(k=target)
            else:
                sets = sql.SQL(", ").join(sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(c)) for c in cols)
                query += sql.SQL(" ON CONFLICT ({k}) DO UPDATE SET {s}").format(k=target, s=sets)
        query += sql.SQL(" RETURNING to_json({t}.*)").format(t=t)
        return self._run(query, (json.dumps(rows),))

    def select(self, table: str, filters: list[tuple[str, str]]) -> list[dict]:
        from psycopg import sql

        for name in [table, *(c for c, _ in filters)]:
            if not _IDENT.fullmatch(name):
                raise StandInError(400, "PGRST100", f"stand-in: unsupported identifier {name!r}")
        where = sql.SQL(" AND ").join(sql.SQL("{c}::text = %s").format(c=sql.Identifier(c)) for c, _ in filters)
        query = sql.SQL("SELECT to_json(t.*) FROM {t} AS t").format(t=sql.Identifier(table))
        if filters:
            query += sql.SQL(" WHERE ") + where
        return self._run(query, tuple(v for _, v in filters))


class PostgrestStandIn(_Server):
    """Supabase's REST endpoint (PostgREST), see the module docstring. ``url`` is what SUPABASE_URL gets."""

    def __init__(self, key: str = "service-role-key-for-tests", dsn: str | None = None) -> None:
        self.key = key
        self.backend = PostgresBackend(dsn) if dsn else MemoryBackend()
        self._failures: list[tuple[str | None, int, dict[str, str], bytes]] = []
        super().__init__()

    def fail_next(self, status: int, body: Any, table: str | None = None,
                  content_type: str = "application/json") -> None:
        """Answer the next request (for `table`, if given) with this status and body."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self._failures.append((table, status, {"Content-Type": content_type}, data))

    def env(self) -> dict[str, str]:
        return {"SUPABASE_URL": self.url, "SUPABASE_SERVICE_ROLE_KEY": self.key}

    def rows(self, table: str, **eq: str) -> list[dict]:
        return self.backend.select(table, list(eq.items()))

    def handle(self, method, path, headers, body):
        parts = urlsplit(path)
        query = parse_qsl(parts.query, keep_blank_values=True)
        parsed = json.loads(body) if body else None
        self.requests.append(Recorded(method, parts.path, query, headers, parsed))
        match = re.fullmatch(r"/rest/v1/(\w+)", parts.path)
        table = match[1] if match else None
        for i, (only, status, reply_headers, data) in enumerate(self._failures):
            if only in (None, table):
                del self._failures[i]
                return status, reply_headers, data
        try:
            if headers.get("apikey") != self.key or headers.get("authorization") != f"Bearer {self.key}":
                raise StandInError(401, None, "Invalid API key", None,
                                   "Double check your Supabase `anon` or `service_role` API key.")
            if not table:
                raise StandInError(404, None, f"stand-in: no route {parts.path}")
            prefer = dict(p.split("=", 1) for p in re.split(r"\s*,\s*", headers.get("prefer", "")) if "=" in p)
            if method == "POST":
                rows = parsed if isinstance(parsed, list) else [parsed]
                if not all(isinstance(r, dict) for r in rows):
                    raise StandInError(400, "PGRST102", "All object keys must match")
                stored = self.backend.upsert(table, rows, dict(query).get("on_conflict"), prefer.get("resolution"))
                if prefer.get("return") != "representation":
                    return 201, {}, b""
                return 201, {"Content-Type": "application/json"}, json.dumps(stored).encode()
            if method == "GET":
                filters = []
                for key, value in query:
                    if key == "select":
                        if value != "*":
                            raise StandInError(400, "PGRST100", "stand-in: only select=* is supported")
                    elif value.startswith("eq."):
                        filters.append((key, value[3:]))
                    else:
                        raise StandInError(400, "PGRST100", f"stand-in: unsupported filter {key}={value}")
                found = self.backend.select(table, filters)
                return 200, {"Content-Type": "application/json"}, json.dumps(found).encode()
            raise StandInError(405, None, f"stand-in: {method} is not supported")
        except StandInError as exc:
            return exc.status, {"Content-Type": "application/json"}, json.dumps(exc.body).encode()


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


class WandbStandIn(_Server):
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """A private PostgreSQL server (see the module docstring). ``dsn(db)`` connects over its unix socket."""

    def __init__(self) -> None:
        bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
        if not bins:
            raise RuntimeError("PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin/initdb): "
                               "apt-get install postgresql (scripts/setup.sh does)")
        self.bin = bins[-1].parent
        self.root = Path(tempfile.mkdtemp(prefix="hpc-registry-pg-"))
        self.data, self.socket_dir, self.port = self.root / "data", self.root / "sock", _free_port()
        self.socket_dir.mkdir()
        self._as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self._as_user:
            shutil.chown(self.root, "postgres")
            shutil.chown(self.socket_dir, "postgres")
        try:
            self._pg("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")
            options = f"-c listen_addresses='' -k {self.socket_dir} -p {self.port} -c fsync=off"
            self._pg("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-w", "-o", options, "start")
        except BaseException:
            shutil.rmtree(self.root, ignore_errors=True)
            raise
        self._count = 0

    def _pg(self, program: str, *args: str) -> None:
        proc = subprocess.run([*self._as_user, str(self.bin / program), *args], capture_output=True, text=True,
                              cwd=self.root)
        if proc.returncode:
            log = self.root / "server.log"
            raise RuntimeError(f"{program} failed: {proc.stderr.strip() or proc.stdout.strip()}"
                               + (f"\n{log.read_text()}" if log.exists() else ""))

    def dsn(self, database: str = "postgres") -> str:
        return f"host={self.socket_dir} port={self.port} user=postgres dbname={database}"

    def database(self) -> str:
        """A new empty database; returns its dsn."""
        import psycopg

        self._count += 1
        name = f"registry_{self._count}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.dsn(name)

    def psql(self, dsn: str, *args: str) -> subprocess.CompletedProcess:
        """Run Debian's psql (as a user would, to create the schema) against `dsn`."""
        return subprocess.run(["psql", "-X", "-v", "ON_ERROR_STOP=1", "-q", dsn, *args], capture_output=True, text=True)

    def stop(self) -> None:
        try:
            self._pg("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
