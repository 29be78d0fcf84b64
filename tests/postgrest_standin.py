"""Loopback stand-in for Supabase's REST endpoint (PostgREST), and a throw-away PostgreSQL server.

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
* ``PostgresServer``: Debian's PostgreSQL 15 in a temp dir, as the ``postgres`` user when run as root
  (initdb refuses root), unix socket only (no TCP), fsync off; ``database()`` makes a fresh database.

The W&B GraphQL stand-in is in wandb_standin.py; both serve through loopback_server.LoopbackServer.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from hpc import ROOT
from loopback_server import LoopbackServer, Recorded

SCHEMA_SQL = ROOT / "hpc" / "registry_schema.sql"
_IDENT = re.compile(r"[a-z_][a-z0-9_]*")
CANARY_KEY = "sb-service-role-CANARY-8f3a"  # the service-role key the registry tests use: it must never be printed


class StandInError(Exception):
    """An error answer in PostgREST's shape."""

    def __init__(self, status: int, code: str | None, message: str, details: str | None = None,
                 hint: str | None = None) -> None:
        super().__init__(message)
        self.status, self.body = status, {"code": code, "details": details, "hint": hint, "message": message}



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


class PostgrestStandIn(LoopbackServer):
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
