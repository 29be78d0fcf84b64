"""The SkyPilot launch's lifecycle without SkyPilot: a stand-in for lifecycle's calls, to see what a failure, a
timeout and Ctrl-C do to the jobs, the manifest and the cluster."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hpc import backends
from hpc import manifest as manifests
from hpc.backends.skypilot import lifecycle, prepare_launch
from hpc.backends.skypilot.runner import run_jobs
from hpc.experiment import write_experiment
from hpc.jobs import JOB_TYPES
from hpc.manifest import Manifest, State
from hpc.options import LaunchOptions


class Calls:
    def __init__(self, follow: str, states: dict[int, str]) -> None:
        self.follow, self.states = follow, states
        self.started: list[bool] = []  # reuse flag of each start
        self.cancelled: list[int] = []
        self.downs = 0


@pytest.fixture
def fake(monkeypatch):
    """lifecycle with SkyPilot replaced: fake(follow=..., states=...) -> the record of calls."""
    def make(follow: str = "ends", states: dict[int, str] | None = None) -> Calls:
        calls = Calls(follow, states or {})

        class Session:
            def __init__(self, cluster: str, deadline: float | None) -> None:
                pass

            def start(self, config: dict, secrets: dict, reuse: bool, down: bool) -> int:
                calls.started.append(reuse)
                return len(calls.started)

            def follow(self, job_id: int, log: Path) -> bool:
                log.write_text(f"ERROR: Job {job_id} failed with return code list: [7]\n")
                if calls.follow == "ctrl-c":
                    raise KeyboardInterrupt
                return calls.follow != "timeout"

            def cancel_request(self) -> None:
                pass

        monkeypatch.setattr(lifecycle, "Session", Session)
        monkeypatch.setattr(lifecycle, "cluster_up", lambda cluster: False)
        monkeypatch.setattr(lifecycle, "job_states", lambda cluster, ids: {i: calls.states.get(i, "SUCCEEDED")
                                                                           for i in ids})
        monkeypatch.setattr(lifecycle, "cancel", lambda cluster, ids: calls.cancelled.extend(ids))
        monkeypatch.setattr(lifecycle, "sync_back", lambda *args, **kwargs: None)

        def down(cluster: str) -> None:
            calls.downs += 1

        monkeypatch.setattr(lifecycle, "down", down)
        return calls

    return make


def launch(tmp_path: Path, *, job_type: str = "run", **options: object) -> Manifest:
    opts = LaunchOptions(backend="skypilot", job_type=job_type, experiments_dir=str(tmp_path / "exp"), job_name="x",
                         **options)  # type: ignore[arg-type]
    opts, environ = prepare_launch(opts, os.environ)
    backend = backends.get("skypilot", opts)
    plan = JOB_TYPES[opts.job_type].build(opts, environ, lambda: backend.limits(False))
    materialized = backend.materialize(plan)
    manifest = Manifest.for_plan(plan, backend.name, materialized.scripts, materialized.arrays, False)
    write_experiment(plan, materialized, manifest)
    run_jobs(plan, materialized, manifest, backend.cloud(plan), {}, backend.log_path)  # type: ignore[attr-defined]
    return manifest


def test_a_failed_job_reports_its_own_exit_code_and_stops_the_chain(tmp_path, fake):
    calls = fake(states={1: "FAILED"})
    manifest = launch(tmp_path, job_type="train", cluster="local", train_config_path="examples/train/tiny_sft_zero3.yaml",
                      gpus_per_node=0, consolidate=True)
    train, consolidate = manifest.jobs
    assert (train.state, train.exit_code, train.job_id) == (State.FAILED, "7", "hpc-x/1")
    assert consolidate.job_id is None and consolidate.reason == "not run: train ended FAILED"
    assert calls.started == [False] and calls.downs == 0  # no --down: the cluster stays


def test_jobs_after_the_first_exec_on_its_cluster(tmp_path, fake):
    calls = fake()
    manifest = launch(tmp_path, job_type="train", cluster="local", train_config_path="examples/train/tiny_sft_zero3.yaml",
                      gpus_per_node=0, consolidate=True, down=True)
    assert calls.started == [False, True] and calls.downs == 1
    assert [j.state for j in manifest.jobs] == [State.COMPLETED, State.COMPLETED]


def test_timeout_cancels_the_job_and_down_tears_down(tmp_path, fake):
    calls = fake(follow="timeout")
    manifest = launch(tmp_path, command="sleep 600", workdir=str(tmp_path), timeout_minutes=0.1, down=True)
    job = manifest.jobs[0]
    assert job.state == State.TIMEOUT and "--timeout_minutes 0.1" in (job.reason or "")
    assert calls.cancelled == [1] and calls.downs == 1


def test_ctrl_c_with_down_cancels_and_tears_down(tmp_path, fake):
    calls = fake(follow="ctrl-c")
    with pytest.raises(lifecycle.Interrupted) as raised:
        launch(tmp_path, command="sleep 600", workdir=str(tmp_path), down=True)
    assert raised.value.exit_code == 130
    assert calls.cancelled == [1] and calls.downs == 1


def test_ctrl_c_without_down_leaves_the_job_running(tmp_path, fake):
    calls = fake(follow="ctrl-c")
    with pytest.raises(lifecycle.Interrupted, match="hpc-launch status"):
        launch(tmp_path, command="sleep 600", workdir=str(tmp_path))
    assert calls.cancelled == [] and calls.downs == 0
    job = manifests.read(tmp_path / "exp" / "x").jobs[0]
    assert job.state == State.PENDING and "keeps running" in (job.reason or "")


def test_status_and_cancel_go_by_cluster_and_a_gone_cluster_keeps_the_recorded_state(tmp_path, fake, monkeypatch):
    fake()
    manifest = launch(tmp_path, command="echo hi", workdir=str(tmp_path), cluster_name="hpc-gone")
    backend = backends.get("skypilot")
    monkeypatch.setattr(lifecycle, "job_states", lambda cluster, ids: None)  # torn down
    status = backend.query(manifest.jobs)["hpc-gone/1"]
    assert (status.state, status.exit_code) == (State.COMPLETED, "0")
    asked: list[tuple[str, list[int]]] = []
    monkeypatch.setattr(lifecycle, "cancel", lambda cluster, ids: asked.append((cluster, ids)))
    monkeypatch.setattr(lifecycle, "job_states", lambda cluster, ids: {i: "CANCELLED" for i in ids})
    assert backend.cancel(manifest.jobs) == [] and asked == [("hpc-gone", [1])]
