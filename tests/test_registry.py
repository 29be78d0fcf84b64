"""hpc.registry: record building, the PostgREST contract supabase-py speaks, W&B metadata, and the schema plus the
same upserts in a real PostgreSQL (supabase-py -> loopback PostgREST stand-in -> PostgreSQL 15).

No real Supabase or W&B is ever contacted: every test process gets dead loopback URLs unless a stand-in's.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime

import pytest

from helpers import run_cli
from hpc import ROOT
from hpc import registry
from hpc.errors import LaunchError
from hpc.jobside.run_summary import build_summary, write_json
from hpc.registry_wandb import run_times
from registry_standins import PostgresServer, PostgrestStandIn, WandbStandIn

CANARY_KEY = "sb-service-role-CANARY-8f3a"
FLAGS = ("--hf-model-id", "org/tiny-sft", "--base-model", "Qwen/Qwen3-0.6B", "--dataset-name", "org/ds1,org/ds2",
         "--training-type", "sft", "--agent-name", "terminus")
SECRET_ENV = ("SUPABASE_URL", "SUPABASE_SERVICE_ROLE_KEY", "WANDB_API_KEY", "WANDB_ENTITY", "WANDB_PROJECT",
              "WANDB_RUN_ID", "WANDB_BASE_URL")


@pytest.fixture(autouse=True)
def _no_real_services(monkeypatch, tmp_path):
    """The developer's keys never reach a test; W&B, if reached by mistake, is a dead loopback port."""
    for key in SECRET_ENV:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("WANDB_ERROR_REPORTING", "false")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))


@pytest.fixture
def postgrest():
    with PostgrestStandIn(key=CANARY_KEY) as standin:
        yield standin


@pytest.fixture
def wandb_api():
    with WandbStandIn() as standin:
        standin.add_run("my-team", "proj", "abc123", created_at="2026-11-20T10:00:00", runtime=7200,
                        config={"learning_rate": 0.001, "model_name_or_path": "Qwen/Qwen3-0.6B"})
        yield standin


@pytest.fixture(scope="session")
def pg():
    try:
        server = PostgresServer()
    except RuntimeError as exc:  # CI installs postgresql (scripts/setup.sh): missing is a failure, not a skip
        pytest.fail(f"cannot start PostgreSQL for the registry tests: {exc}")
    yield server
    server.stop()


@pytest.fixture
def registry_db(pg):
    """A fresh database with hpc/registry_schema.sql applied by psql, as the README says."""
    dsn = pg.database()
    proc = pg.psql(dsn, "-f", str(ROOT / "hpc" / "registry_schema.sql"))
    assert proc.returncode == 0, proc.stderr
    return dsn


def summary_file(tmp_path, entity: str | None = "my-team", **changes) -> str:
    """A run_summary.json written by the job-side script itself."""
    cfg = {"model_name_or_path": "Qwen/Qwen3-0.6B", "stage": "sft", "dataset": "org/ds1,org/ds2",
           "dataset_dir": "ONLINE", "output_dir": "/ckpt/tiny-sft", "hub_model_id": "org/tiny-sft",
           "report_to": "wandb", "learning_rate": 0.001}
    env = {"WANDB_PROJECT": "proj", "WANDB_RUN_ID": "abc123", "SLURM_CLUSTER_NAME": "local", "USER": "alice",
           "SLURM_JOB_ID": "4242"} | ({"WANDB_ENTITY": entity} if entity else {})
    summary = build_summary(cfg | changes, tmp_path / "train.yaml", "2026-11-23T10:00:00+00:00",
                            "2026-11-23T11:30:00+00:00", None, env)
    path = tmp_path / "run_summary.json"
    write_json(path, summary)
    return str(path)


def main(capsys, *args: str) -> tuple[int, str, str]:
    code = registry.main(list(args))
    out, err = capsys.readouterr()
    assert CANARY_KEY not in out + err
    return code, out, err


def one_line_error(code: int, err: str, exit_code: int = 2) -> str:
    assert code == exit_code and len(err.strip().splitlines()) == 1, err
    assert err.startswith("hpc-registry: error: ")
    return err.strip()


def dry_run_row(out: str) -> dict:
    return json.JSONDecoder().raw_decode(out[out.index("  models: ") + len("  models: "):])[0]


# --- pure parts -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, ref", [
    ("my-team/proj/abc123", ("my-team", "proj", "abc123")),
    ("https://wandb.ai/my-team/proj/runs/abc123", ("my-team", "proj", "abc123")),
    ("https://wandb.ai/my-team/proj/runs/abc123/overview?nw=1", ("my-team", "proj", "abc123")),
    ("https://forge.coreweave.com/wandb/t/p/runs/x1?workspace=u", ("t", "p", "x1")),
])
def test_run_path_forms(text, ref):
    assert registry.parse_run(text) == registry.WandbRef(*ref)


@pytest.mark.parametrize("text", ["proj/abc123", "my-team/proj/abc123/extra", "my team/proj/id", "", "a//b",
                                  "https://wandb.ai/my-team/proj/abc123"])
def test_malformed_run_paths(text):
    with pytest.raises(LaunchError, match="is not entity/project/run_id"):
        registry.parse_run(text)


def test_row_has_only_known_columns():
    record = registry.ModelRecord(name="org/m", base_model="b", datasets=("d1", "d2"), training_type="RL",
                                  weights_location="/w")
    ids = {"base_models": "B", "datasets": "D1"}
    assert record.row(ids) == {"name": "org/m", "training_type": "RL", "weights_location": "/w",
                               "dataset_names": ["d1", "d2"], "base_model_id": "B", "dataset_id": "D1"}
    assert record.references() == {"agents": [], "base_models": ["b"], "datasets": ["d1", "d2"]}


def test_secret_looking_parameters_are_redacted():
    params = {"hf_hub_token": "hf_abc", "learning_rate": 1e-3, "max_new_tokens": 64, "pad_token_id": 0,
              "nested": {"wandb_api_key": "k", "apikey": "x", "token": None}, "list": [{"password": "p"}]}
    assert registry.redact(params) == {
        "hf_hub_token": "<redacted>", "learning_rate": 1e-3, "max_new_tokens": 64, "pad_token_id": 0,
        "nested": {"wandb_api_key": "<redacted>", "apikey": "<redacted>", "token": None},
        "list": [{"password": "<redacted>"}]}


def test_wandb_times():
    attrs = {"createdAt": "2026-11-20T10:00:00", "heartbeatAt": "2026-11-20T11:00:00", "state": "finished"}
    assert run_times(attrs, {"_runtime": 90}) == ("2026-11-20T10:00:00+00:00", "2026-11-20T10:01:30+00:00")
    assert run_times(attrs, {}) == ("2026-11-20T10:00:00+00:00", "2026-11-20T11:00:00+00:00")
    assert run_times(attrs | {"state": "running"}, {"_runtime": 90}) == ("2026-11-20T10:00:00+00:00", None)


# --- CLI: dry run and refusals (nothing read, nothing written) ---------------------------------------------------

def test_help_and_dry_run_import_nothing_heavy_and_touch_no_network(tmp_path):
    """In a fresh interpreter with every socket call refused: --help, then a dry run with a W&B run."""
    code = f"""
import contextlib, io, socket, sys
def refuse(*args, **kwargs):
    raise SystemExit(f"network call during dry run: {{args}}")
socket.socket.connect = refuse
socket.create_connection = refuse
socket.getaddrinfo = refuse
from hpc import registry
with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
    registry.main(["--help"])
rc = registry.main({list(FLAGS)!r} + ["--wandb-run", "my-team/proj/abc123", "--dry_run"])
heavy = {{"wandb", "supabase", "postgrest", "httpx", "psycopg"}} & set(sys.modules)
print("exit", rc, "heavy", sorted(heavy))
"""
    probe = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert probe.stdout.strip().splitlines()[-1] == "exit 0 heavy []", probe.stdout + probe.stderr


def test_dry_run_prints_the_exact_rows_and_sends_nothing(capsys, postgrest, monkeypatch):
    for key, value in postgrest.env().items():
        monkeypatch.setenv(key, value)
    code, out, err = main(capsys, *FLAGS, "--wandb-run", "https://wandb.ai/my-team/proj/runs/abc123", "--dry_run")
    assert code == 0, err
    assert postgrest.requests == []
    assert '  agents: {"name": "terminus"}\n  base_models: {"name": "Qwen/Qwen3-0.6B"}\n' in out
    assert '  datasets: {"name": "org/ds1"}\n  datasets: {"name": "org/ds2"}\n' in out
    assert dry_run_row(out) == {
        "name": "org/tiny-sft", "training_type": "SFT", "dataset_names": ["org/ds1", "org/ds2"],
        "agent_id": "<id of agents 'terminus'>", "base_model_id": "<id of base_models 'Qwen/Qwen3-0.6B'>",
        "dataset_id": "<id of datasets 'org/ds1'>", "wandb_run_path": "my-team/proj/abc123",
        "wandb_link": "https://wandb.ai/my-team/proj/runs/abc123",
    }
    assert ("W&B lookup skipped (dry run): training_start, training_end, training_parameters would come from "
            "W&B run my-team/proj/abc123") in out


def test_dry_run_from_a_run_summary(capsys, tmp_path):
    code, out, err = main(capsys, "--run_summary", summary_file(tmp_path), "--agent-name", "terminus", "--dry-run")
    assert code == 0, err
    row = dry_run_row(out)
    assert row == {
        "name": "org/tiny-sft", "training_type": "SFT", "training_status": "finished",
        "training_start": "2026-11-23T10:00:00+00:00", "training_end": "2026-11-23T11:30:00+00:00",
        "weights_location": "/ckpt/tiny-sft", "created_by": "alice", "creation_location": "local",
        "slurm_job_id": "4242", "dataset_names": ["org/ds1", "org/ds2"],
        "training_parameters": row["training_parameters"],
        "wandb_run_path": "my-team/proj/abc123", "wandb_link": "https://wandb.ai/my-team/proj/runs/abc123",
        "agent_id": "<id of agents 'terminus'>", "base_model_id": "<id of base_models 'Qwen/Qwen3-0.6B'>",
        "dataset_id": "<id of datasets 'org/ds1'>",
    }
    assert row["training_parameters"]["learning_rate"] == 0.001
    assert "W&B lookup skipped" not in out  # the summary has everything W&B would give


def test_flags_override_the_run_summary(capsys, tmp_path):
    code, out, _ = main(capsys, "--run_summary", summary_file(tmp_path), "--hf-model-id", "org/other",
                        "--weights-location", "hf://org/other", "--training-type", "rl", "--dry_run")
    row = dry_run_row(out)
    assert code == 0
    assert (row["name"], row["weights_location"], row["training_type"]) == ("org/other", "hf://org/other", "RL")


@pytest.mark.parametrize("args, message", [
    ((), "no model name: pass --hf-model-id (or a --run_summary that has it); nothing has a default"),
    (FLAGS[:2], "no base model: pass --base-model"),
    (FLAGS[:4], "no dataset: pass --dataset-name"),
    (FLAGS[:6], "no training type: pass --training-type"),
    (FLAGS[:6] + ("--training-type", "DPO"), "training type 'DPO' is not one of SFT, RL"),
    (FLAGS + ("--wandb-run", "my-team/my-run-name"), "--wandb-run 'my-team/my-run-name' is not entity/project/run_id"),
    (FLAGS + ("--wandb-run", "https://wandb.ai/my-team/proj/abc123"), "is not entity/project/run_id"),
    (FLAGS + ("--skip_wandb",), "SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY are not set in the environment"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_is_sent(capsys, postgrest, wandb_api, args, message):
    code, _, err = main(capsys, *args)
    assert message in one_line_error(code, err)
    assert postgrest.requests == [] and wandb_api.requests == []


def test_missing_keys_are_named_and_nothing_is_sent(capsys, postgrest, wandb_api, monkeypatch):
    monkeypatch.setenv("SUPABASE_URL", postgrest.url)
    code, _, err = main(capsys, *FLAGS, "--wandb-run", "my-team/proj/abc123")
    line = one_line_error(code, err)
    assert "SUPABASE_SERVICE_ROLE_KEY and WANDB_API_KEY (or pass --skip_wandb) are not set" in line
    assert "source your secrets file" in line
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", CANARY_KEY)
    code, _, err = main(capsys, *FLAGS, "--wandb-run", "my-team/proj/abc123")
    assert "WANDB_API_KEY (or pass --skip_wandb) is not set" in one_line_error(code, err)
    monkeypatch.setenv("SUPABASE_URL", "ftp://example.invalid")
    code, _, err = main(capsys, *FLAGS, "--skip_wandb")
    assert "SUPABASE_URL 'ftp://example.invalid' is not an http(s) URL" in one_line_error(code, err)
    assert postgrest.requests == [] and wandb_api.requests == []


@pytest.mark.parametrize("content, message", [
    ("{not json", "cannot read it"),
    ('{"model_name": "x"}', "is not a run summary (hpc-launch.run_summary/1"),
])
def test_bad_run_summary(capsys, tmp_path, content, message):
    path = tmp_path / "run_summary.json"
    path.write_text(content)
    code, _, err = main(capsys, "--run_summary", str(path), "--dry_run")
    assert message in one_line_error(code, err)


def test_manual_db_push_script_runs_from_the_repo_root_and_elsewhere(tmp_path):
    for cwd in (ROOT, tmp_path):
        proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "manual_db_push.py"), *FLAGS, "--dry-run"],
                              capture_output=True, text=True, cwd=cwd)
        assert proc.returncode == 0 and '"name": "org/tiny-sft"' in proc.stdout, proc.stderr
    result = run_cli("--help", module="hpc.registry")
    assert result.returncode == 0 and "--hf-model-id" in result.stdout and "--run-summary" in result.stdout


# --- the PostgREST contract (supabase-py against the loopback stand-in) ------------------------------------------

def test_exact_requests_supabase_py_sends(capsys, postgrest, monkeypatch):
    for key, value in postgrest.env().items():
        monkeypatch.setenv(key, value)
    code, out, err = main(capsys, *FLAGS, "--weights-location", "hf://org/tiny-sft", "--skip_wandb")
    assert code == 0, err
    sent = [(r.method, r.path, r.query, r.body) for r in postgrest.requests]
    ids = {t: {r["name"]: r["id"] for r in postgrest.rows(t)} for t in ("agents", "base_models", "datasets")}
    model_row = {"name": "org/tiny-sft", "training_type": "SFT", "weights_location": "hf://org/tiny-sft",
                 "dataset_names": ["org/ds1", "org/ds2"], "agent_id": ids["agents"]["terminus"],
                 "base_model_id": ids["base_models"]["Qwen/Qwen3-0.6B"], "dataset_id": ids["datasets"]["org/ds1"]}
    on_name = [("on_conflict", "name")]
    assert sent == [
        ("POST", "/rest/v1/agents", on_name, {"name": "terminus"}),
        ("POST", "/rest/v1/base_models", on_name, {"name": "Qwen/Qwen3-0.6B"}),
        ("POST", "/rest/v1/datasets", on_name, {"name": "org/ds1"}),
        ("POST", "/rest/v1/datasets", on_name, {"name": "org/ds2"}),
        ("POST", "/rest/v1/models", on_name, model_row),
    ]
    for request in postgrest.requests:
        h = request.headers
        assert h["apikey"] == CANARY_KEY and h["authorization"] == f"Bearer {CANARY_KEY}"
        assert sorted(h["prefer"].split(",")) == ["resolution=merge-duplicates", "return=representation"]
        assert h["content-type"] == "application/json"
        assert h["content-profile"] == h["accept-profile"] == "public"
        assert h["x-client-info"].startswith("supabase-py/2.")
    stored = postgrest.rows("models", name="org/tiny-sft")[0]
    assert out.strip() == (f"hpc-registry: registered model 'org/tiny-sft' (id {stored['id']}, "
                           f"first registered {stored['created_at']})")
    # Registering again sends the same upserts and keeps every id: idempotent on the unique names.
    assert main(capsys, *FLAGS, "--weights-location", "hf://org/tiny-sft", "--skip_wandb")[0] == 0
    assert [(r.path, r.body) for r in postgrest.requests[5:]] == [(p, b) for _, p, _, b in sent]
    assert len(postgrest.rows("models")) == 1 and postgrest.rows("models")[0]["id"] == stored["id"]


@pytest.mark.parametrize("status, body, table, expected", [
    (400, {"code": "23514", "message": 'new row for relation "models" violates check constraint',
           "details": "Failing row", "hint": None}, "models",
     '23514: new row for relation "models" violates check constraint; Failing row'),
    (409, {"code": "23503", "message": "insert or update on table \"models\" violates foreign key constraint",
           "details": None, "hint": None}, "models", "23503: insert or update on table"),
    (401, {"message": "Invalid API key", "hint": "Double check your Supabase `anon` or `service_role` API key."},
     "agents", "Invalid API key; Double check your Supabase `anon` or `service_role` API key. "
               "(SUPABASE_SERVICE_ROLE_KEY must be the project's service-role key)"),
    (403, {"code": "42501", "message": 'new row violates row-level security policy for table "agents"'}, "agents",
     "(SUPABASE_SERVICE_ROLE_KEY must be the project's service-role key)"),
    (503, b"<html><body>upstream connect error</body></html>", "agents", "503: Service Unavailable; <html>"),
    (500, {"code": "XX000", "message": "internal error", "details": None, "hint": None}, "datasets",
     "XX000: internal error"),
])
def test_error_answers_are_one_clear_line_exit_1(capsys, postgrest, monkeypatch, status, body, table, expected):
    for key, value in postgrest.env().items():
        monkeypatch.setenv(key, value)
    postgrest.fail_next(status, body, table=table,
                        content_type="text/html" if isinstance(body, bytes) else "application/json")
    code, _, err = main(capsys, *FLAGS, "--skip_wandb")
    line = one_line_error(code, err, exit_code=1)
    assert f"Supabase refused the upsert into {table}" in line and expected in line, line
    assert postgrest.rows("models") == []
    assert postgrest.requests[-1].path == f"/rest/v1/{table}"  # stopped at the first refusal


def test_wrong_key_and_unreachable_server(capsys, monkeypatch):
    with PostgrestStandIn(key="the-right-key") as standin:
        monkeypatch.setenv("SUPABASE_URL", standin.url)
        monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", CANARY_KEY)
        code, _, err = main(capsys, *FLAGS, "--skip_wandb")
        assert "Invalid API key" in one_line_error(code, err, exit_code=1)
        port = standin.url.rsplit(":", 1)[1]
    code, _, err = main(capsys, *FLAGS, "--skip_wandb")  # the stand-in is gone: nothing listens there
    line = one_line_error(code, err, exit_code=1)
    assert f"cannot reach Supabase at http://127.0.0.1:{port} (upsert into agents): ConnectError:" in line, line


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


# --- the schema and the same upserts in a real PostgreSQL ------------------------------------------------------

def test_schema_is_idempotent_with_unique_names_and_checks(pg, registry_db):
    import psycopg

    again = pg.psql(registry_db, "-f", str(ROOT / "hpc" / "registry_schema.sql"))
    assert again.returncode == 0, again.stderr
    with psycopg.connect(registry_db, autocommit=True) as conn:
        unique = conn.execute("SELECT tc.table_name FROM information_schema.table_constraints tc JOIN "
                              "information_schema.constraint_column_usage cu USING (constraint_name) "
                              "WHERE tc.constraint_type = 'UNIQUE' AND cu.column_name = 'name'").fetchall()
        assert sorted(t for (t,) in unique) == ["agents", "base_models", "datasets", "models"]
        conn.execute("INSERT INTO models (name) VALUES ('m')")
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute("INSERT INTO models (name) VALUES ('m')")
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("INSERT INTO models (name, training_type) VALUES ('m2', 'DPO')")
        # On Supabase (roles anon and authenticated exist) it also adds read-only policies.
        conn.execute("CREATE ROLE anon; CREATE ROLE authenticated")
    try:
        assert pg.psql(registry_db, "-f", str(ROOT / "hpc" / "registry_schema.sql")).returncode == 0
        with psycopg.connect(registry_db) as conn:
            policies = conn.execute("SELECT tablename, cmd FROM pg_policies ORDER BY 1").fetchall()
        assert policies == [(t, "SELECT") for t in ("agents", "base_models", "datasets", "models")]
    finally:
        with psycopg.connect(registry_db, autocommit=True) as conn:
            conn.execute("DROP OWNED BY anon, authenticated; DROP ROLE anon; DROP ROLE authenticated")


def test_end_to_end_into_postgresql_second_registration_changes_only_what_it_was_given(tmp_path, registry_db,
                                                                                        capsys, monkeypatch):
    import psycopg

    with PostgrestStandIn(key=CANARY_KEY, dsn=registry_db) as standin:
        for key, value in standin.env().items():
            monkeypatch.setenv(key, value)
        assert main(capsys, "--run_summary", summary_file(tmp_path), "--agent-name", "terminus")[0] == 0
        with psycopg.connect(registry_db) as conn:  # someone edits rows by hand between the registrations
            conn.execute("UPDATE agents SET description = 'hand-written', hash = 'abc' WHERE name = 'terminus'")
            conn.execute("UPDATE models SET description = 'keep me' WHERE name = 'org/tiny-sft'")
        first = standin.rows("models", name="org/tiny-sft")[0]
        agent = standin.rows("agents")[0]

        code, _, err = main(capsys, "--hf-model-id", "org/tiny-sft", "--base-model", "Qwen/Qwen3-0.6B",
                            "--dataset-name", "org/ds1,org/ds2", "--training-type", "SFT", "--agent-name", "terminus",
                            "--weights-location", "hf://org/tiny-sft", "--skip_wandb")
        assert code == 0, err
        second = standin.rows("models", name="org/tiny-sft")[0]
        changed = {k for k in first if first[k] != second[k]}
        assert changed == {"weights_location", "updated_at"}, changed
        assert second["weights_location"] == "hf://org/tiny-sft" and second["description"] == "keep me"
        assert second["training_parameters"]["learning_rate"] == 0.001
        assert second["wandb_run_path"] == "my-team/proj/abc123"
        assert standin.rows("agents") == [agent] and agent["description"] == "hand-written"  # untouched, same updated_at
        assert [len(standin.rows(t)) for t in ("agents", "base_models", "datasets", "models")] == [1, 1, 2, 1]

        # The same registration again changes nothing at all (the trigger keeps updated_at).
        assert main(capsys, "--hf-model-id", "org/tiny-sft", "--base-model", "Qwen/Qwen3-0.6B", "--dataset-name",
                    "org/ds1,org/ds2", "--training-type", "SFT", "--agent-name", "terminus",
                    "--weights-location", "hf://org/tiny-sft", "--skip_wandb")[0] == 0
        assert standin.rows("models", name="org/tiny-sft") == [second]
        assert datetime.fromisoformat(second["created_at"]) < datetime.fromisoformat(second["updated_at"])


def test_postgresql_errors_reach_the_user_through_supabase_py(registry_db, monkeypatch):
    """A check violation in PostgreSQL -> PostgREST error body -> postgrest.APIError -> one clear line."""
    with PostgrestStandIn(key=CANARY_KEY, dsn=registry_db) as standin:
        client = registry.connect(standin.url, CANARY_KEY)
        assert registry.upsert(client, "agents", {"name": "a"})["name"] == "a"
        with pytest.raises(registry.ServiceError) as info:
            registry.upsert(client, "models", {"name": "m", "training_type": "DPO"})
        assert str(info.value).startswith("Supabase refused the upsert into models ('m'): 23514: new row for relation "
                                          '"models" violates check constraint "models_training_type_check"')
        with pytest.raises(registry.ServiceError, match="42703: column \"nope\" of relation \"models\" does not exist"):
            registry.upsert(client, "models", {"name": "m", "nope": 1})
