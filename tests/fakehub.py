"""Loopback stand-in for the Hugging Face Hub, spoken to by the real ``huggingface_hub`` client (1.33).

Pointing the client at it:
  * ``huggingface_hub.constants.ENDPOINT`` is read from ``HF_ENDPOINT`` once, when the package is first
    imported, and the module-level helpers (``huggingface_hub.upload_folder``, ``create_repo``...) are bound
    to an ``HfApi()`` built at that import. So a job/subprocess needs ``HF_ENDPOINT=hub.url`` in its
    environment *before* it imports huggingface_hub (``hub.env()``); changing ``os.environ`` in a process
    that already imported it has no effect.
  * In-process, pass the endpoint explicitly: ``HfApi(endpoint=hub.url)`` (or ``hub.api()``),
    ``hf_hub_download(..., endpoint=hub.url)``, ``snapshot_download(..., endpoint=hub.url)``.
  * Whatever ``endpoint=`` says, the client GETs ``{constants.ENDPOINT}/api/agent-harnesses`` once per process
    (served here; kept off huggingface.co in-process, see ``_quiet_agent_registry``), and the ``hf`` CLI asks
    pypi.org for updates unless ``HF_HUB_DISABLE_UPDATE_CHECK=1`` (part of ``hub.env()``).

Behaviour: repos live in ``root/repos/{type}s/{ns}/{name}/`` (``meta.json``: privacy and commit history;
``files/``: the tree at ``main``), contents in ``root/blobs/{git oid}``. Like the Hub, ``create_repo`` makes
an empty "initial commit". Preupload answers ``uploadMode: "regular"`` for every file (so no LFS/Xet
transfer happens) plus the remote oid, so the client skips unchanged files. Any ``Authorization: Bearer``
token is accepted; anonymous requests get 401 on private repos and on writes. Revisions: ``main`` or a
commit sha. Model and dataset repos only.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import sys
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import pytest

Reply = tuple[int, dict[str, str], bytes]
_API = re.compile(
    r"^/api/(model|dataset)s/([^/]+/[^/]+)(?:/(revision|tree|commits|preupload|commit|refs)(?:/([^/]+)(/.*)?)?)?$"
)
_RESOLVE = re.compile(r"^/(?:(dataset)s/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")
_UNAUTHORIZED = "Invalid username or password."
_NO_AGENTS: dict[str, Any] = {"standardEnvVars": [], "harnesses": {}}


class HubError(Exception):
    """An error answer: HTTP status, ``X-Error-Code`` and extra JSON body fields."""

    def __init__(self, status: int, message: str, code: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.extra = status, code, extra


def git_oid(data: bytes) -> str:
    """Git blob sha1: the oid the Hub reports for regular (non-LFS) files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _json(obj: Any, status: int = 200) -> Reply:
    return status, {"Content-Type": "application/json"}, json.dumps(obj).encode()


def _quiet_agent_registry() -> None:
    """The client GETs ``{constants.ENDPOINT}/api/agent-harnesses`` once per process when building request
    headers, whatever ``endpoint=`` says: in-process (ENDPOINT still huggingface.co) it would try the real Hub.
    If the client is loaded, give it the empty registry an offline fetch yields. (Not imported here: some tests
    assert it stays unimported; ``FakeHub`` sets HF_HUB_DISABLE_TELEMETRY for a later import instead.)"""
    if "huggingface_hub.constants" in sys.modules:
        from huggingface_hub.utils import _detect_agent

        if getattr(_detect_agent, "_registry", "absent") is None:
            _detect_agent._registry = _NO_AGENTS


class FakeHub:
    """Hub on 127.0.0.1:<free port>, served from a background thread while used as a context manager."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.requests: list[dict[str, Any]] = []  # method, path, query, auth, token, status
        self.url = ""
        self._failures: list[list[Any]] = []  # [regex, method or None, status, remaining]
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._set_env = False

    def __enter__(self) -> FakeHub:
        _quiet_agent_registry()
        self._set_env = "HF_HUB_DISABLE_TELEMETRY" not in os.environ
        os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), type("Handler", (_Handler,), {"hub": self}))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, args=(0.05,), name="fakehub", daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._set_env:
            os.environ.pop("HF_HUB_DISABLE_TELEMETRY", None)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def env(self) -> dict[str, str]:
        """Environment for a job/subprocess using this hub (the ``hf`` CLI otherwise asks pypi.org for updates)."""
        return {"HF_ENDPOINT": self.url, "HF_HUB_DISABLE_UPDATE_CHECK": "1"}

    def api(self, token: str | bool | None = "fakehub-token") -> Any:
        """An in-process ``HfApi`` bound to this hub (``token=False``: anonymous)."""
        from huggingface_hub import HfApi

        _quiet_agent_registry()
        return HfApi(endpoint=self.url, token=token)

    # -- test-facing API -------------------------------------------------------------------------
    def add_repo(self, repo_id: str, files: dict[str, bytes], repo_type: str = "model", private: bool = False) -> str:
        """Create the repo if needed and commit ``files`` to it; return the commit sha."""
        self._create(repo_type, repo_id, private, exist_ok=True)
        return self._commit(repo_type, repo_id, "seed", files, [], [])

    def repo_files(self, repo_id: str, repo_type: str = "model") -> dict[str, bytes]:
        """Files at ``main``: path -> content."""
        tree = self._meta(repo_type, repo_id)["commits"][-1]["tree"]
        return {path: (self.root / "blobs" / oid).read_bytes() for path, oid in tree.items()}

    def commits(self, repo_id: str, repo_type: str = "model") -> list[dict[str, Any]]:
        """History, oldest first: dicts with sha, message, date, added, deleted, tree (path -> oid)."""
        return self._meta(repo_type, repo_id)["commits"]

    def is_private(self, repo_id: str, repo_type: str = "model") -> bool:
        return bool(self._meta(repo_type, repo_id)["private"])

    def fail_next(self, path_regex: str, status: int = 500, times: int = 1, method: str | None = None) -> None:
        """Answer the next ``times`` requests whose path matches ``path_regex`` (re.search) with ``status``."""
        with self._lock:
            self._failures.append([re.compile(path_regex), method, status, times])

    # -- storage ---------------------------------------------------------------------------------
    def _dir(self, rtype: str, repo_id: str) -> Path:
        return self.root / "repos" / f"{rtype}s" / repo_id

    def _meta(self, rtype: str, repo_id: str) -> dict[str, Any]:
        path = self._dir(rtype, repo_id) / "meta.json"
        if not path.is_file():
            raise HubError(404, f"Repository {rtype}s/{repo_id} not found", "RepoNotFound")
        return json.loads(path.read_text())

    def _save(self, rtype: str, repo_id: str, meta: dict[str, Any]) -> None:
        tmp = self._dir(rtype, repo_id) / "meta.json.tmp"
        tmp.write_text(json.dumps(meta, indent=1))
        tmp.replace(tmp.with_suffix(""))

    def _create(self, rtype: str, repo_id: str, private: bool, exist_ok: bool) -> None:
        with self._lock:
            if (self._dir(rtype, repo_id) / "meta.json").is_file():
                if not exist_ok:
                    url = f"{self.url}/{'' if rtype == 'model' else rtype + 's/'}{repo_id}"
                    raise HubError(409, f"You already created this {rtype} repo", url=url)
                return
            (self._dir(rtype, repo_id) / "files").mkdir(parents=True)
            self._save(rtype, repo_id, {"private": private, "created": _now(), "commits": []})
            self._commit(rtype, repo_id, "initial commit", {}, [], [])

    @staticmethod
    def _at(meta: dict[str, Any], rev: str) -> dict[str, Any]:
        for commit in meta["commits"][-1:] if rev == "main" else meta["commits"]:
            if rev in ("main", commit["sha"]):
                return commit
        raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")

    def _commit(self, rtype: str, repo_id: str, message: str, added: dict[str, bytes], deleted: list[str],
                folders: list[str], parent: str | None = None) -> str:
        with self._lock:
            meta = self._meta(rtype, repo_id)
            head = meta["commits"][-1] if meta["commits"] else {"sha": None, "tree": {}}
            if parent is not None and parent != head["sha"]:
                raise HubError(412, f"parentCommit {parent} is not the head of main ({head['sha']})")
            tree: dict[str, str] = dict(head["tree"])
            for path in deleted:
                if tree.pop(path, None) is None:
                    raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
            gone = list(deleted)
            for folder in folders:
                gone += [p for p in list(tree) if p.startswith(folder.rstrip("/") + "/") and tree.pop(p)]
            (self.root / "blobs").mkdir(exist_ok=True)
            for path, data in added.items():
                tree[path] = git_oid(data)
                (self.root / "blobs" / tree[path]).write_bytes(data)
            sha = hashlib.sha1(json.dumps([head["sha"], message, tree, len(meta["commits"]), _now()]).encode())
            commit = {"sha": sha.hexdigest(), "message": message, "date": _now(), "added": sorted(added),
                      "deleted": sorted(gone), "tree": tree}
            meta["commits"].append(commit)
            files = self._dir(rtype, repo_id) / "files"
            shutil.rmtree(files, ignore_errors=True)
            files.mkdir()
            for path, oid in tree.items():
                (files / path).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(self.root / "blobs" / oid, files / path)
            self._save(rtype, repo_id, meta)
            return commit["sha"]

    # -- HTTP API (called from server threads) ---------------------------------------------------
    def _injected(self, method: str, path: str) -> int | None:
        with self._lock:
            for rule in self._failures:
                if rule[3] > 0 and rule[1] in (None, method) and rule[0].search(path):
                    rule[3] -= 1
                    return int(rule[2])
        return None

    def handle(self, method: str, path: str, query: dict[str, str], body: bytes, token: str | None) -> Reply:
        """Route one request (raw, still-quoted path); return (status, headers, body)."""
        if path == "/api/repos/create" and method == "POST":
            return self._create_api(json.loads(body or b"{}"), token)
        if path == "/api/validate-yaml" and method == "POST":
            return _json({"errors": [], "warnings": []})
        if path == "/api/agent-harnesses":  # fetched by build_hf_headers() / the hf CLI: nothing registered
            return _json(_NO_AGENTS)
        if path == "/api/whoami-v2":
            if token is None:
                raise HubError(401, "Invalid credentials in Authorization header")
            return _json({"type": "user", "name": "fakehub-user", "orgs": [], "auth": {"type": "access_token"}})
        if m := _RESOLVE.match(path):
            return self._download(m[1] or "model", unquote(m[2]), unquote(m[3]), unquote(m[4]), token)
        if not (m := _API.match(path)):
            raise HubError(404, f"fakehub: no route for {method} {path}")
        rtype, repo_id, action, rev = m[1], unquote(m[2]), m[3], unquote(m[4] or "main")
        meta = self._meta(rtype, repo_id)
        if token is None and (meta["private"] or action in ("preupload", "commit")):
            raise HubError(401, _UNAUTHORIZED, "RepoNotFound")
        if action in ("preupload", "commit") and rev != "main":
            raise HubError(404, f"fakehub: only main is writable, not {rev!r}", "RevisionNotFound")
        commit = self._at(meta, rev)
        if action == "preupload":
            files = json.loads(body)["files"]
            return _json({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                                     "oid": commit["tree"].get(f["path"])} for f in files]})
        if action == "commit":
            return self._commit_api(rtype, repo_id, body)
        if action in (None, "revision"):
            tree = sorted(commit["tree"].items())
            siblings = [{"rfilename": path, "size": self._size(oid), "blobId": oid} for path, oid in tree]
            return _json({"id": repo_id, "author": repo_id.split("/")[0], "sha": commit["sha"],
                          "private": meta["private"], "disabled": False, "gated": False, "tags": [],
                          "createdAt": meta["created"], "lastModified": commit["date"], "siblings": siblings})
        if action == "tree":
            recursive = query.get("recursive", "").lower() in ("true", "1")
            return _json(self._tree(commit, unquote(m[5] or "").strip("/"), recursive))
        if action == "commits":
            history = meta["commits"][: meta["commits"].index(commit) + 1]
            return _json([{"id": c["sha"], "title": c["message"], "message": "", "date": c["date"],
                           "authors": [{"user": "fakehub-user"}]} for c in reversed(history)])
        branch = {"name": "main", "ref": "refs/heads/main", "targetCommit": meta["commits"][-1]["sha"]}
        return _json({"branches": [branch], "converts": [], "tags": [], "pullRequests": []})

    def _size(self, oid: str) -> int:
        return (self.root / "blobs" / oid).stat().st_size

    def _create_api(self, payload: dict[str, Any], token: str | None) -> Reply:
        if token is None:
            raise HubError(401, _UNAUTHORIZED)
        rtype = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or 'fakehub-user'}/{payload['name']}"
        self._create(rtype, repo_id, payload.get("visibility") == "private", exist_ok=False)
        return _json({"url": f"{self.url}/{'' if rtype == 'model' else rtype + 's/'}{repo_id}", "name": repo_id})

    def _commit_api(self, rtype: str, repo_id: str, body: bytes) -> Reply:
        header: dict[str, Any] = {}
        added: dict[str, bytes] = {}
        deleted: list[str] = []
        folders: list[str] = []
        for line in filter(None, (raw.strip() for raw in body.splitlines())):
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                header = value
            elif key == "file":
                raw = value["content"]
                added[value["path"]] = base64.b64decode(raw) if value.get("encoding") == "base64" else raw.encode()
            elif key in ("deletedFile", "deletedFolder"):
                (deleted if key == "deletedFile" else folders).append(value["path"])
            else:
                raise HubError(400, f"fakehub: unsupported commit operation {key!r} (it never asks for LFS/Xet)")
        message, parent = header.get("summary", ""), header.get("parentCommit")
        sha = self._commit(rtype, repo_id, message, added, deleted, folders, parent)
        url = f"{self.url}/{'' if rtype == 'model' else rtype + 's/'}{repo_id}/commit/{sha}"
        return _json({"success": True, "commitOid": sha, "commitUrl": url, "hookOutput": "", "pullRequestUrl": None})

    def _tree(self, commit: dict[str, Any], base: str, recursive: bool) -> list[dict[str, Any]]:
        prefix, entries = (base + "/" if base else ""), {}
        for path, oid in commit["tree"].items():
            if not path.startswith(prefix):
                continue
            parts = path[len(prefix):].split("/")
            for depth in range(1, len(parts) if recursive else min(2, len(parts))):
                folder = prefix + "/".join(parts[:depth])
                entries[folder] = {"type": "directory", "oid": git_oid(folder.encode()), "size": 0, "path": folder}
            if recursive or len(parts) == 1:
                entries[path] = {"type": "file", "oid": oid, "size": self._size(oid), "path": path}
        if base and not entries:
            raise HubError(404, f"{base} does not exist", "EntryNotFound")
        return [entries[key] for key in sorted(entries)]

    def _download(self, rtype: str, repo_id: str, rev: str, path: str, token: str | None) -> Reply:
        meta = self._meta(rtype, repo_id)
        if meta["private"] and token is None:
            raise HubError(401, _UNAUTHORIZED, "RepoNotFound")
        commit = self._at(meta, rev)
        if path not in commit["tree"]:
            raise HubError(404, "Entry not found", "EntryNotFound", commit=commit["sha"])
        oid = commit["tree"][path]
        data = (self.root / "blobs" / oid).read_bytes()  # HEAD: same headers, the handler drops the body
        headers = {"Content-Type": "application/octet-stream", "ETag": f'"{oid}"', "X-Repo-Commit": commit["sha"]}
        return 200, headers, data


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    def _serve(self) -> None:  # the client always sends a Content-Length (bytes or JSON bodies, never chunked)
        body, url = self.rfile.read(int(self.headers.get("Content-Length") or 0)), urlsplit(self.path)
        auth = self.headers.get("Authorization", "")
        token = auth[len("Bearer "):] or None if auth.startswith("Bearer ") else None
        entry = {"method": self.command, "path": unquote(url.path), "query": dict(parse_qsl(url.query)),
                 "auth": token is not None, "token": token, "status": None}
        self.hub.requests.append(entry)
        try:
            if (injected := self.hub._injected(self.command, entry["path"])) is not None:
                raise HubError(injected, f"fakehub: injected failure ({injected})")
            status, headers, payload = self.hub.handle(self.command, url.path, entry["query"], body, token)
        except HubError as err:
            status, headers, payload = _json({"error": str(err), **err.extra}, err.status)
            headers["X-Error-Message"] = str(err)
            headers.update({"X-Error-Code": err.code} if err.code else {})
            headers.update({"X-Repo-Commit": err.extra["commit"]} if "commit" in err.extra else {})
        except Exception as err:  # a bug in the fake: answer 500 and keep serving
            status, headers, payload = _json({"error": f"fakehub crashed: {err!r}"}, 500)
        entry["status"] = status
        self.send_response(status)
        headers.setdefault("Content-Length", str(len(payload)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _serve


@pytest.fixture
def fake_hub(tmp_path: Path) -> Iterator[FakeHub]:
    """A started FakeHub storing its repos under ``tmp_path / "fakehub"``."""
    with FakeHub(tmp_path / "fakehub") as hub:
        yield hub
