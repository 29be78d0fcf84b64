"""Every network wait is bounded and each failure is one line: the Hub (prefetch, deferred uploads, consolidate),
Supabase, the W&B API and `wandb sync`, against a loopback server that accepts and never answers and a `wandb`
stand-in that hangs."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpc import ROOT
from hpc.errors import LaunchError

from helpers import run_cli, wait_for
from loopback_server import SilentServer


@pytest.fixture
def silent():
    with SilentServer() as server:
        yield server


def _one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


def test_prefetch_gives_up_on_a_hub_that_never_answers(silent, monkeypatch, tmp_path):
    from hpc.prefetch import Fetch, Fetcher

    monkeypatch.setenv("HPC_LAUNCH_HUB_TIMEOUT", "1")
    start = time.monotonic()
    with pytest.raises(LaunchError) as err:
        Fetcher(tmp_path / "cache", dry_run=False, endpoint=silent.url)(Fetch("model", "org/m", None, "test"))
    assert time.monotonic() - start < 60  # bounded, not by the hang
    assert _one_line(str(err.value)) == ("prefetch: the Hub gave no answer within 1 s for model org/m; nothing was "
                                         "submitted: try again, or wait longer with HPC_LAUNCH_HUB_TIMEOUT=SECONDS")


@pytest.mark.parametrize("value", ["soon", "0", "-5", "inf", "nan"])
def test_a_bad_timeout_setting_is_one_line(monkeypatch, tmp_path, value):
    from hpc.prefetch import Fetch, Fetcher

    monkeypatch.setenv("HPC_LAUNCH_HUB_TIMEOUT", value)
    with pytest.raises(LaunchError, match=f"HPC_LAUNCH_HUB_TIMEOUT='{value}' is not a number of seconds above 0"):
        Fetcher(tmp_path, dry_run=False, endpoint="http://127.0.0.1:9")(Fetch("model", "org/m", None, "test"))


def _deferred(tmp_path: Path, deferred: dict) -> Path:
    exp = tmp_path / "exp"
    (exp / "configs").mkdir(parents=True)
    (exp / "configs" / "deferred.json").write_text(json.dumps(deferred))
    return exp


def test_deferred_upload_gives_up_on_a_hub_that_never_answers(silent, tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "w.bin").write_text("weights")
    exp = _deferred(tmp_path, {"uploads": [{"folder": str(tmp_path / "model"), "repo": "org/m"}]})
    start = time.monotonic()
    result = run_cli(str(tmp_path / "exp"), module="hpc.jobside.sync",
                     env={"HF_ENDPOINT": silent.url, "HF_TOKEN": "hf_x", "HPC_LAUNCH_HUB_TIMEOUT": "1",
                          "HF_HUB_DISABLE_TELEMETRY": "1"})
    assert time.monotonic() - start < 60, "bounded, even with huggingface_hub's own retries"
    assert result.returncode == 1 and "upload org/m: FAILED:" in result.stdout and "Timeout" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    assert not (exp / "state" / "sync.json").read_text().strip("{}\n")


def test_consolidate_job_gives_up_on_a_hub_that_never_answers(silent, tmp_path):
    start = time.monotonic()
    result = run_cli("--input", "org/m", "--output", str(tmp_path / "out"), module="hpc.jobside.consolidate",
                     env={"HF_ENDPOINT": silent.url, "HPC_LAUNCH_HUB_TIMEOUT": "1", "HF_HOME": str(tmp_path / "hf")})
    assert time.monotonic() - start < 60
    assert result.returncode == 1 and _one_line(result.stderr).startswith("consolidate: failed:"), result


def test_a_hanging_wandb_sync_is_stopped_with_its_helpers(tmp_path, monkeypatch, capsys):
    from hpc.jobside.sync import run

    bindir = tmp_path / "bin"
    bindir.mkdir()
    pids = tmp_path / "pids"
    (bindir / "wandb").write_text(f"#!/bin/sh\nsleep 600 &\necho $! $$ > {pids}\nwait\n")  # a helper, then hang
    (bindir / "wandb").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("HPC_LAUNCH_WANDB_SYNC_TIMEOUT", "1")
    (tmp_path / "w" / "wandb" / "offline-run-20261123_101500-job").mkdir(parents=True)
    exp = _deferred(tmp_path, {"wandb_runs": [{"dir": str(tmp_path / "w"), "run_id": "job"}]})
    start = time.monotonic()
    assert run(exp) == 1
    assert time.monotonic() - start < 60  # bounded by the 1 s timeout, not by the hang
    out = capsys.readouterr().out
    assert "wandb job: syncing 1 run dir(s); giving up after 1 s ($HPC_LAUNCH_WANDB_SYNC_TIMEOUT)" in out
    assert ("wandb job: FAILED: RuntimeError: wandb sync did not finish within 1 s (W&B unreachable?); set "
            "HPC_LAUNCH_WANDB_SYNC_TIMEOUT to wait longer") in out
    for pid in map(int, pids.read_text().split()):
        stat = Path(f"/proc/{pid}/stat")

        def gone() -> bool:
            try:
                return stat.read_text().rsplit(")", 1)[1].split()[0] in "ZX"
            except OSError:
                return True

        wait_for(gone, 10, f"process {pid} (killed with its group) to end")


@pytest.mark.registry
def test_supabase_that_never_answers_is_one_line(silent, monkeypatch):
    from hpc import registry

    monkeypatch.setenv("HPC_LAUNCH_SUPABASE_TIMEOUT", "1")
    monkeypatch.setenv("SUPABASE_URL", silent.url)
    client = registry.connect(silent.url, "k" * 40)
    start = time.monotonic()
    with pytest.raises(registry.ServiceError) as err:
        registry.upsert(client, "agents", {"name": "a"})
    assert time.monotonic() - start < 60  # bounded by the 1 s timeout, not by the hang
    assert _one_line(str(err.value)) == (f"cannot reach Supabase at {silent.url} (upsert into agents): ReadTimeout: "
                                         "timed out; wait longer with HPC_LAUNCH_SUPABASE_TIMEOUT=SECONDS")


@pytest.mark.registry
def test_wandb_api_that_never_answers_is_one_line(silent, tmp_path):
    """The whole registry command, in its own process (wandb.Api starts a helper), with W&B silent."""
    env = {"SUPABASE_URL": silent.url, "SUPABASE_SERVICE_ROLE_KEY": "k" * 40, "WANDB_API_KEY": "w" * 40,
           "WANDB_BASE_URL": silent.url, "HPC_LAUNCH_WANDB_TIMEOUT": "2", "WANDB_ERROR_REPORTING": "false",
           "WANDB_DIR": str(tmp_path), "WANDB_CONFIG_DIR": str(tmp_path), "WANDB_CACHE_DIR": str(tmp_path)}
    # Output to files, not pipes: wandb's service process outlives the command and would hold a pipe open.
    out, err = tmp_path / "out", tmp_path / "err"
    with open(out, "w") as stdout, open(err, "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "hpc.registry", "--hf-model-id", "org/m", "--base-model", "b",
                                 "--dataset-name", "d", "--training-type", "SFT", "--wandb-run", "team/proj/abc"],
                                stdout=stdout, stderr=stderr, start_new_session=True, cwd=ROOT,
                                env={**os.environ, "PYTHONPATH": str(ROOT), **env})
        try:
            returncode = proc.wait(timeout=120)  # bounded: the 2 s timeout, wandb's own retries, start-up
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the service process wandb left behind, if any
    assert returncode == 1 and _one_line(err.read_text()).startswith("hpc-registry: error: W&B run team/proj/abc:")
    assert "w" * 40 not in err.read_text()


@pytest.mark.parametrize("name", ["HPC_LAUNCH_SUPABASE_TIMEOUT", "HPC_LAUNCH_WANDB_TIMEOUT"])
def test_bad_registry_timeouts_are_input_errors(monkeypatch, name):
    from hpc.registry import service_timeout

    monkeypatch.setenv(name, "-1")
    with pytest.raises(LaunchError, match=f"{name}='-1' is not a number of seconds above 0; unset it or give seconds"):
        service_timeout(name)


def test_job_side_programs_stay_standalone():
    """consolidate.py and sync.py are copied into experiments and run alone: stdlib imports at module level only."""
    for name in ("consolidate.py", "sync.py"):
        code = (f"import sys; sys.path[:0] = [{str(ROOT / 'hpc' / 'jobside')!r}]; import {name[:-3]}; "
                "print(sorted(m for m in ('hpc', 'huggingface_hub', 'httpx') if m in sys.modules))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
        assert out.returncode == 0 and out.stdout.strip() == "[]", (name, out)
