"""hpc.registry against Supabase: the PostgREST contract supabase-py speaks (against the loopback stand-in), its
error answers, and the schema plus the same upserts in a real PostgreSQL (supabase-py -> loopback PostgREST
stand-in -> PostgreSQL 15).

No real Supabase or W&B is ever contacted: every test process gets dead loopback URLs unless a stand-in's.
"""

from __future__ import annotations

from datetime import datetime

import pytest

from hpc import ROOT
from hpc import registry
from postgrest_standin import CANARY_KEY, PostgrestStandIn
from registry_helpers import FLAGS, main, one_line_error, summary_file

pytestmark = [pytest.mark.usefixtures("no_real_registry_services"), pytest.mark.registry]


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
