"""hpc.sync's bookkeeping and its W&B path (a stand-in `wandb` command records what it is asked)."""

import json
import os

from hpc import ROOT
from hpc.jobside.sync import run

from helpers import run_cli


def _experiment(tmp_path, deferred: dict):
    exp = tmp_path / "exp"
    (exp / "configs").mkdir(parents=True)
    (exp / "configs" / "deferred.json").write_text(json.dumps(deferred))
    return exp


def test_wandb_runs_are_synced_once(tmp_path, monkeypatch, capsys):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    calls = tmp_path / "wandb_calls"
    (bindir / "wandb").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (bindir / "wandb").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    runs = tmp_path / "wandbdir" / "wandb"
    (runs / "offline-run-20261123_101500-myjob").mkdir(parents=True)
    (runs / "offline-run-20261123_101500-otherjob").mkdir()
    exp = _experiment(tmp_path, {"wandb_runs": [{"dir": str(tmp_path / "wandbdir"), "run_id": "myjob"}]})
    assert run(exp) == 0
    assert calls.read_text().split() == ["sync", str(runs / "offline-run-20261123_101500-myjob")]
    assert run(exp) == 0 and len(calls.read_text().splitlines()) == 1  # done items are not redone
    assert "already done" in capsys.readouterr().out


def test_failures_are_reported_and_retried_next_time(tmp_path, capsys):
    exp = _experiment(tmp_path, {"wandb_runs": [{"dir": str(tmp_path), "run_id": "nothing-here"}],
                                 "uploads": [{"folder": str(tmp_path / "missing"), "repo": "org/x"}]})
    assert run(exp) == 1
    out = capsys.readouterr().out
    assert "wandb nothing-here: FAILED" in out and "upload org/x: FAILED" in out and "run again to retry" in out
    assert json.loads((exp / "state" / "sync.json").read_text()) == {}


def test_a_pattern_is_one_upload_per_index_each_recorded_and_retried_on_its_own(tmp_path, monkeypatch, capsys):
    from hpc.jobside import sync

    uploaded = []

    def fake_upload(item):
        if not (tmp_path / item["folder"]).is_dir():
            raise RuntimeError(f"{item['folder']} does not exist")
        uploaded.append(item)
        return f"commit of {item['repo']}"

    monkeypatch.setattr(sync, "upload", fake_upload)
    for name in ("chunk_000", "chunk_002", "chunk_003", "old_style"):
        (tmp_path / name).mkdir()
    exp = _experiment(tmp_path, {"uploads": [
        {"folder": str(tmp_path / "chunk_{index:03d}"), "repo": "org/x-chunk{index:03d}", "indices": "0-1,3",
         "repo_type": "dataset", "private": True},
        {"folder": str(tmp_path / "old_style"), "repo": "org/old", "repo_type": "dataset"}]})  # as before patterns
    assert run(exp) == 1
    assert [(u["folder"], u["repo"]) for u in uploaded] == [(str(tmp_path / "chunk_000"), "org/x-chunk000"),
                                                            (str(tmp_path / "chunk_003"), "org/x-chunk003"),
                                                            (str(tmp_path / "old_style"), "org/old")]
    assert all("indices" not in u and u["repo_type"] == "dataset" and u["private"] for u in uploaded[:2])
    assert set(json.loads((exp / "state" / "sync.json").read_text())) == {"upload org/x-chunk000",
                                                                          "upload org/x-chunk003", "upload org/old"}
    assert "upload org/x-chunk001: FAILED" in capsys.readouterr().out
    (tmp_path / "chunk_001").mkdir()
    uploaded.clear()
    assert run(exp) == 0
    assert [u["repo"] for u in uploaded] == ["org/x-chunk001"]  # only what failed


def test_index_ranges_round_trip():
    from hpc.jobside.sync import index_ranges, parse_indices

    for indices in ([0], [0, 1, 2, 5], [3, 7, 8, 9, 12], list(range(10_000))):
        assert parse_indices(index_ranges(indices)) == indices
    assert index_ranges([9, 0, 1, 2, 4, 10, 11]) == "0-2,4,9-11" and index_ranges(list(range(10_000))) == "0-9999"


def test_nothing_deferred(tmp_path, capsys):
    assert run(tmp_path) == 0 and "nothing deferred" in capsys.readouterr().out


def _launch_and_sync(tmp_path, fake_hub, *args):
    """A dry-run launch on the offline local profile (uploads deferred), then `python -m hpc.sync` on it."""
    dotenv = tmp_path / "local.env"
    dotenv.write_text((ROOT / "hpc" / "dotenv" / "local.env").read_text() + f"HF_ENDPOINT={fake_hub.url}\n")
    secrets = tmp_path / "secrets.env"
    secrets.write_text("HF_TOKEN=hf_sync_token\n")
    secrets.chmod(0o600)
    launch = run_cli("--cluster", "local", "--dotenv", str(dotenv), "--secrets_env", str(secrets), "--dry_run",
                     "--experiments_dir", str(tmp_path / "exp"), "--job_name", "s", *args, cwd=tmp_path)
    assert launch.returncode == 0, launch.stderr
    assert f"python -m hpc.sync {tmp_path / 'exp' / 's'}" in launch.stdout
    return tmp_path / "exp" / "s"


def test_hpc_sync_uploads_what_a_datagen_launch_deferred(tmp_path, fake_hub):
    (tmp_path / "gen.py").write_text("")
    (tmp_path / "dg.yaml").write_text("engine: none\nmodel: m\n")
    exp = _launch_and_sync(tmp_path, fake_hub, "--job_type", "datagen", "--datagen_config", str(tmp_path / "dg.yaml"),
                           "--datagen_script", "gen.py", "--datagen_target_repo", "org/tasks", "--enable_trace_gen",
                           "--trace_target_repo", "org/traces", "--num_chunks", "2")
    for rel in ("outputs/tasks/task_0/task.json", "outputs/traces/chunk_000/t.json", "outputs/traces/chunk_001/t.json"):
        (exp / rel).parent.mkdir(parents=True, exist_ok=True)
        (exp / rel).write_text("{}")
    result = run_cli(str(exp), module="hpc.sync", env={"HF_HUB_DISABLE_TELEMETRY": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert list(fake_hub.repo_files("org/tasks", "dataset")) == ["task_0/task.json"]
    assert list(fake_hub.repo_files("org/traces-chunk001", "dataset")) == ["t.json"]
    assert "hf_sync_token" not in result.stdout + result.stderr


def test_hpc_sync_uploads_what_a_consolidate_launch_deferred(tmp_path, fake_hub):
    ckpt = tmp_path / "run" / "checkpoint-2"
    (ckpt / "global_step2").mkdir(parents=True)
    (ckpt / "latest").write_text("global_step2")
    (ckpt / "global_step2" / "zero_pp_rank_0_mp_rank_00_model_states.pt").write_text("")
    exp = _launch_and_sync(tmp_path, fake_hub, "--job_type", "consolidate", "--consolidate_input", str(tmp_path / "run"),
                           "--consolidate_output_dir", str(tmp_path / "merged"), "--consolidate_output_repo", "org/m")
    (tmp_path / "merged").mkdir()
    (tmp_path / "merged" / "model.safetensors").write_text("weights")
    (tmp_path / "merged" / ".consolidate-tmp").write_text("scratch")
    result = run_cli(str(exp), module="hpc.sync")
    assert result.returncode == 0, result.stdout + result.stderr
    assert list(fake_hub.repo_files("org/m", "model")) == ["model.safetensors"] and fake_hub.is_private("org/m", "model")
