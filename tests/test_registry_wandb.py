"""hpc.registry's W&B metadata through wandb.Api against the loopback W&B GraphQL stand-in (a separate process:
wandb starts its wandb-core helper), written through the PostgREST stand-in.

No real Supabase or W&B is ever contacted: every test process gets dead loopback URLs unless a stand-in's.
"""

from __future__ import annotations

import pytest

from helpers import run_cli
from registry_helpers import FLAGS, summary_file

pytestmark = [pytest.mark.usefixtures("no_real_registry_services"), pytest.mark.registry]


# --- W&B metadata through wandb.Api (a separate process: wandb starts its wandb-core helper) --------------------

def _cli(tmp_path, postgrest, wandb_api, *args, **env):
    return run_cli(*args, module="hpc.registry", env={**postgrest.env(), **wandb_api.env(tmp_path), **env})


def test_wandb_metadata_fills_the_row(tmp_path, postgrest, wandb_api):
    result = _cli(tmp_path, postgrest, wandb_api, *FLAGS, "--wandb-run", "my-team/proj/abc123")
    assert result.returncode == 0, result.stderr
    assert "W&B run my-team/proj/abc123: finished, started 2026-11-20T10:00:00+00:00" in result.stdout
    row = postgrest.rows("models", name="org/tiny-sft")[0]
    assert row["training_start"] == "2026-11-20T10:00:00+00:00"
    assert row["training_end"] == "2026-11-20T12:00:00+00:00"  # createdAt + summary _runtime (7200 s)
    assert row["training_parameters"] == {"learning_rate": 0.001, "model_name_or_path": "Qwen/Qwen3-0.6B"}
    assert row["training_status"] == "finished" and row["wandb_run_path"] == "my-team/proj/abc123"
    assert row["wandb_link"] == f"{wandb_api.url}/my-team/proj/runs/abc123"  # the server's own app URL
    queries = wandb_api.graphql()
    run_query = next(q for q in queries if "query Run(" in q["query"])
    assert run_query["variables"] == {"entity": "my-team", "project": "proj", "name": "abc123"}
    for field in ("createdAt", "heartbeatAt", "state", "config", "summaryMetrics"):
        assert field in run_query["query"]
    assert {r.path for r in wandb_api.requests} == {"/graphql"}
    assert all(r.headers["authorization"].startswith("Basic ") for r in wandb_api.requests)
    assert wandb_api.api_key not in result.stdout + result.stderr


def test_run_summary_alone_needs_no_wandb(tmp_path, postgrest, wandb_api):
    result = _cli(tmp_path, postgrest, wandb_api, "--run_summary", summary_file(tmp_path), WANDB_API_KEY="")
    assert result.returncode == 0, result.stderr
    assert wandb_api.requests == []
    row = postgrest.rows("models", name="org/tiny-sft")[0]
    assert (row["training_start"], row["wandb_run_path"]) == ("2026-11-23T10:00:00+00:00", "my-team/proj/abc123")


def test_summary_without_entity_gets_it_from_wandb_and_keeps_its_own_times(tmp_path, postgrest, wandb_api):
    result = _cli(tmp_path, postgrest, wandb_api, "--run_summary", summary_file(tmp_path, entity=None))
    assert result.returncode == 0, result.stderr
    row = postgrest.rows("models", name="org/tiny-sft")[0]
    assert row["wandb_run_path"] == "my-team/proj/abc123"  # the key's default entity (GraphQL viewer)
    assert (row["training_start"], row["training_end"]) == ("2026-11-23T10:00:00+00:00", "2026-11-23T11:30:00+00:00")
    assert row["training_parameters"]["dataset"] == "org/ds1,org/ds2"  # the job's config, not W&B's


def test_wandb_failures_are_one_line_exit_1_and_nothing_is_written(tmp_path, postgrest, wandb_api):
    missing = _cli(tmp_path, postgrest, wandb_api, *FLAGS, "--wandb-run", "my-team/proj/nope")
    assert missing.returncode == 1 and len(missing.stderr.strip().splitlines()) == 1, missing.stderr
    assert missing.stderr.startswith("hpc-registry: error: W&B run my-team/proj/nope: ")
    bad_key = _cli(tmp_path, postgrest, wandb_api, *FLAGS, "--wandb-run", "my-team/proj/abc123", WANDB_API_KEY="w" * 40)
    assert bad_key.returncode == 1 and "W&B run my-team/proj/abc123: " in bad_key.stderr, bad_key.stderr
    assert "w" * 40 not in bad_key.stdout + bad_key.stderr
    assert postgrest.requests == []
