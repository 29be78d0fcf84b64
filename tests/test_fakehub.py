"""FakeHub driven by the real huggingface_hub client: in subprocesses through HF_ENDPOINT (as SLURM jobs will
use it) and in-process with an explicit endpoint. Nothing may connect anywhere but 127.0.0.1."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fakehub import FakeHub

# huggingface_hub is imported inside the tests, never at collection: other tests assert it stays unimported.
pytestmark = pytest.mark.skipif(importlib.util.find_spec("huggingface_hub") is None, reason="needs huggingface_hub")

TOKEN = "hf_fakehub_test_token"
MODEL_FILES = {"config.json": b'{"hidden_size": 8}', "model.safetensors": bytes(range(256)) * 40,
               "tokenizer/vocab.txt": b"a\nb\n"}
DATA_FILES = {"train.jsonl": b'{"text": "hi"}\n', "data/val.jsonl": b'{"text": "yo"}\n'}

# Prepended to every client subprocess: records every name lookup / socket connect (NET) and refuses any that is
# not for loopback; checks that HF_ENDPOINT was picked up at import. The epilogue prints RESULT and NET as JSON.
_PRELUDE = """
import json, os, sys
NET = []
def _guard(event, args):
    if event == "socket.getaddrinfo" or (event == "socket.connect" and isinstance(args[1], tuple)):
        host = args[0] if event == "socket.getaddrinfo" else args[1][0]
        NET.append(host.decode() if isinstance(host, bytes) else str(host))
        if NET[-1] not in ("127.0.0.1", "::1", "localhost"):
            raise ConnectionRefusedError(f"test guard: refused network access to {host!r}")
sys.addaudithook(_guard)
import huggingface_hub.constants
assert huggingface_hub.constants.ENDPOINT == os.environ["HF_ENDPOINT"], huggingface_hub.constants.ENDPOINT
ARGS = json.loads(sys.argv[1])
"""
_EPILOGUE = """
print(json.dumps({"result": RESULT, "net": NET}))
"""


def run_client(hub: FakeHub, tmp_path: Path, code: str, **args: Any) -> Any:
    """Run ``code`` (which sets RESULT) in a fresh interpreter whose environment points at ``hub``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(hub.env(), HF_TOKEN=TOKEN, HF_HOME=str(tmp_path / "hf_home"), HF_HUB_DISABLE_PROGRESS_BARS="1",
               NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    script = _PRELUDE + textwrap.dedent(code) + _EPILOGUE
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(args)], env=env, capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["net"] and set(out["net"]) == {"127.0.0.1"}, out["net"]
    return out["result"]


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch) -> Iterator[list[str]]:
    """In-process: refuse and record any name lookup or socket connect that is not for 127.0.0.1; fail the test
    afterwards even if the client swallowed the refusal."""
    seen: list[str] = []
    real_getaddrinfo, real_connect = socket.getaddrinfo, socket.socket.connect

    def check(host: Any) -> None:
        seen.append(host.decode() if isinstance(host, bytes) else str(host))
        if seen[-1] not in ("127.0.0.1", "::1", "localhost"):
            raise ConnectionRefusedError(f"test guard: refused network access to {host!r}")

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        check(host)
        return real_getaddrinfo(host, *args, **kwargs)

    def connect(sock: socket.socket, address: Any) -> None:
        if isinstance(address, tuple):
            check(address[0])
        real_connect(sock, address)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", connect)
    yield seen
    assert set(seen) <= {"127.0.0.1"}, f"network access outside loopback: {sorted(set(seen))}"


def download(hub: FakeHub, tmp_path: Path, repo_id: str, filename: str, token: str | bool = TOKEN, **kw: Any) -> str:
    from huggingface_hub import hf_hub_download

    return hf_hub_download(repo_id, filename, cache_dir=tmp_path / "cache", endpoint=hub.url, token=token, **kw)


def test_env_route_upload_folder_creates_private_repo_and_adds_commits(fake_hub, tmp_path):
    big = random.Random(0).randbytes(3 * 1024 * 1024)  # > any "small file" threshold: must still go "regular"
    first = {"config.json": b'{"a": 1}', "weights/model.bin": big, "logs/run/deep/events.txt": b"step 1\n"}
    second = {"checkpoint-2/trainer_state.json": b'{"step": 2}'}
    for name, files in (("first", first), ("second", second)):
        for path, data in files.items():
            (tmp_path / name / path).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name / path).write_bytes(data)

    result = run_client(fake_hub, tmp_path, """
        from huggingface_hub import HfApi, create_repo, upload_folder  # module-level: bound at import
        url = create_repo(ARGS["repo"], private=True, exist_ok=True)
        one = upload_folder(repo_id=ARGS["repo"], folder_path=ARGS["first"], commit_message="first upload")
        create_repo(ARGS["repo"], private=True, exist_ok=True)  # a relaunch: repo exists (409, tolerated)
        two = HfApi().upload_folder(repo_id=ARGS["repo"], folder_path=ARGS["second"], commit_message="second")
        RESULT = {"url": str(url), "one": one.oid, "two": two.oid}
    """, repo="team/run-1", first=str(tmp_path / "first"), second=str(tmp_path / "second"))

    assert result["url"] == f"{fake_hub.url}/team/run-1"
    assert fake_hub.is_private("team/run-1")
    commits = fake_hub.commits("team/run-1")
    assert [c["message"] for c in commits] == ["initial commit", "first upload", "second"]
    assert [c["sha"] for c in commits[1:]] == [result["one"], result["two"]]
    assert (commits[1]["added"], commits[1]["deleted"]) == (sorted(first), [])
    assert (commits[2]["added"], commits[2]["deleted"]) == (sorted(second), [])
    assert fake_hub.repo_files("team/run-1") == {**first, **second}
    assert (fake_hub.root / "repos/models/team/run-1/files/weights/model.bin").read_bytes() == big

    writes = [r for r in fake_hub.requests if r["method"] != "GET"]
    assert writes and all(r["token"] == TOKEN for r in writes)
    assert [r["status"] for r in writes if r["path"] == "/api/repos/create"] == [200, 409]
    # Only create / preupload / commit (and the client's agent registry): no LFS batch, no Xet token, no tree.
    assert {(r["method"], r["path"]) for r in fake_hub.requests} == {
        ("GET", "/api/agent-harnesses"), ("POST", "/api/repos/create"),
        ("POST", "/api/models/team/run-1/preupload/main"), ("POST", "/api/models/team/run-1/commit/main")}


def test_env_route_snapshot_download_model_and_dataset_second_launch_uses_cache(fake_hub, tmp_path):
    model_sha = fake_hub.add_repo("org/tiny-model", MODEL_FILES)
    data_sha = fake_hub.add_repo("org/tiny-data", DATA_FILES, repo_type="dataset")
    code = """
        from huggingface_hub import snapshot_download
        RESULT = {"model": snapshot_download("org/tiny-model", cache_dir=ARGS["cache"]),
                  "data": snapshot_download("org/tiny-data", repo_type="dataset", cache_dir=ARGS["cache"])}
    """
    first = run_client(fake_hub, tmp_path, code, cache=str(tmp_path / "cache"))
    assert Path(first["model"]).name == model_sha and Path(first["data"]).name == data_sha
    assert {n: (Path(first["model"]) / n).read_bytes() for n in MODEL_FILES} == MODEL_FILES
    assert {n: (Path(first["data"]) / n).read_bytes() for n in DATA_FILES} == DATA_FILES
    file_gets = sorted(r["path"] for r in fake_hub.requests if r["method"] == "GET" and "/resolve/" in r["path"])
    assert file_gets == sorted([f"/org/tiny-model/resolve/{model_sha}/{n}" for n in MODEL_FILES]
                               + [f"/datasets/org/tiny-data/resolve/{data_sha}/{n}" for n in DATA_FILES])

    mark = len(fake_hub.requests)
    assert run_client(fake_hub, tmp_path, code, cache=str(tmp_path / "cache")) == first  # a second launch
    again = sorted((r["method"], r["path"]) for r in fake_hub.requests[mark:])
    assert again == [("GET", "/api/datasets/org/tiny-data/revision/main"),
                     ("GET", "/api/models/org/tiny-model/revision/main")]  # resolve "main", download nothing


def test_in_process_repo_info_listing_and_commits(fake_hub, tmp_path, loopback_only):
    api = fake_hub.api(TOKEN)
    sha = fake_hub.add_repo("org/data", DATA_FILES, repo_type="dataset", private=True)
    info = api.dataset_info("org/data")
    assert (info.id, info.sha, info.private) == ("org/data", sha, True)
    assert sorted(s.rfilename for s in info.siblings) == sorted(DATA_FILES)
    assert api.repo_info("org/data", repo_type="dataset", revision=sha).sha == sha
    assert sorted(api.list_repo_files("org/data", repo_type="dataset")) == sorted(DATA_FILES)
    api.upload_file(path_or_fileobj=b"new", path_in_repo="extra.txt", repo_id="org/data", repo_type="dataset")
    titles = [c.title for c in api.list_repo_commits("org/data", repo_type="dataset")]
    assert titles == ["Upload extra.txt with huggingface_hub", "seed", "initial commit"]
    assert fake_hub.commits("org/data", "dataset")[-1]["deleted"] == []
    path = download(fake_hub, tmp_path, "org/data", "data/val.jsonl", repo_type="dataset")
    assert Path(path).read_bytes() == DATA_FILES["data/val.jsonl"]
    assert loopback_only and set(loopback_only) == {"127.0.0.1"}  # the in-process client used the fake only


def test_missing_repo_revision_and_file_errors(fake_hub, tmp_path):
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    api = fake_hub.api(TOKEN)
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("org/missing")
    with pytest.raises(RepositoryNotFoundError):
        snapshot_download("org/missing", cache_dir=tmp_path / "cache", endpoint=fake_hub.url, token=TOKEN)
    fake_hub.add_repo("org/m", {"a.txt": b"a"})
    with pytest.raises(RepositoryNotFoundError):
        api.dataset_info("org/m")  # right name, wrong repo type
    with pytest.raises(RevisionNotFoundError):
        api.model_info("org/m", revision="0" * 40)
    with pytest.raises(RemoteEntryNotFoundError):
        download(fake_hub, tmp_path, "org/m", "missing.txt")
    with pytest.raises(HfHubHTTPError) as conflict:
        api.create_repo("org/m")  # exist_ok=False
    assert conflict.value.response.status_code == 409


def test_fail_next_injects_server_errors(fake_hub, tmp_path):
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    api = fake_hub.api(TOKEN)
    fake_hub.add_repo("org/m", {"a.txt": b"a"})

    fake_hub.fail_next(r"^/api/models/org/m$", 500)
    with pytest.raises(HfHubHTTPError, match="injected failure") as err:
        api.model_info("org/m")  # plain API calls are not retried
    assert err.value.response.status_code == 500 and not isinstance(err.value, RepositoryNotFoundError)
    assert api.model_info("org/m").sha  # only the next request failed

    fake_hub.fail_next(r"/revision/main$", 503)  # snapshot_download turns a 5xx into "not in the local cache"
    with pytest.raises(LocalEntryNotFoundError, match="503"):
        snapshot_download("org/m", cache_dir=tmp_path / "cache", endpoint=fake_hub.url, token=TOKEN)

    fake_hub.fail_next(r"/resolve/", 500, method="GET")  # file content GET: not retried on 5xx
    with pytest.raises(HfHubHTTPError) as err:
        download(fake_hub, tmp_path, "org/m", "a.txt")
    assert err.value.response.status_code == 500

    fake_hub.fail_next(r"/preupload/", 503)  # preupload goes through http_backoff: retried after ~1 s
    api.upload_file(path_or_fileobj=b"b", path_in_repo="b.txt", repo_id="org/m")
    assert [r["status"] for r in fake_hub.requests if "/preupload/" in r["path"]] == [503, 200]
    assert fake_hub.repo_files("org/m") == {"a.txt": b"a", "b.txt": b"b"}


def test_private_repo_refuses_anonymous_access(fake_hub, tmp_path):
    from huggingface_hub.errors import RepositoryNotFoundError

    fake_hub.add_repo("org/secret", {"w.bin": b"weights"}, private=True)
    fake_hub.add_repo("org/public", {"r.txt": b"r"})
    anon = fake_hub.api(token=False)
    with pytest.raises(RepositoryNotFoundError):
        anon.model_info("org/secret")
    with pytest.raises(RepositoryNotFoundError):
        download(fake_hub, tmp_path, "org/secret", "w.bin", token=False)
    with pytest.raises(RepositoryNotFoundError):
        anon.upload_file(path_or_fileobj=b"x", path_in_repo="x", repo_id="org/public")  # writes need a token
    assert [(r["auth"], r["status"]) for r in fake_hub.requests] == [(False, 401)] * 3
    assert fake_hub.repo_files("org/public") == {"r.txt": b"r"}

    assert Path(download(fake_hub, tmp_path, "org/secret", "w.bin")).read_bytes() == b"weights"
    assert fake_hub.requests[-1]["token"] == TOKEN and fake_hub.requests[-1]["status"] == 200


def test_hf_endpoint_is_read_at_import_time(fake_hub, monkeypatch):
    """Why jobs must get HF_ENDPOINT in their environment and in-process callers must pass endpoint=."""
    import huggingface_hub

    monkeypatch.setenv("HF_ENDPOINT", fake_hub.url)
    assert huggingface_hub.constants.ENDPOINT != fake_hub.url
    assert huggingface_hub.hf_api.api.endpoint != fake_hub.url
    assert fake_hub.api().endpoint == fake_hub.url
