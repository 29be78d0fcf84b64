"""hpc.sync's bookkeeping and its W&B path (a stand-in `wandb` command records what it is asked)."""

import json
import os

from hpc.jobside.sync import run


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


def test_nothing_deferred(tmp_path, capsys):
    assert run(tmp_path) == 0 and "nothing deferred" in capsys.readouterr().out
