"""hpc.registry without any service: run paths, row building, redaction, W&B times, the dry run (from flags and
from a run summary, merged with flags) and the refusals of bad input. Nothing is sent anywhere.

No real Supabase or W&B is ever contacted: every test process gets dead loopback URLs unless a stand-in's.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from helpers import run_cli, run_python_without_network
from hpc import ROOT
from hpc import registry
from hpc.errors import LaunchError
from hpc.registry_wandb import run_times
from postgrest_standin import CANARY_KEY
from registry_helpers import FLAGS, main, one_line_error, summary_file

pytestmark = pytest.mark.usefixtures("no_real_registry_services")


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
import contextlib, io, sys
from hpc import registry
with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
    registry.main(["--help"])
rc = registry.main({list(FLAGS)!r} + ["--wandb-run", "my-team/proj/abc123", "--dry_run"])
heavy = {{"wandb", "supabase", "postgrest", "httpx", "psycopg"}} & set(sys.modules)
print("exit", rc, "heavy", sorted(heavy))
"""
    probe = run_python_without_network(code)
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


@pytest.mark.registry
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
    ("{not json", "is not valid JSON (Expecting property name enclosed in double quotes at line 1, column 2); check "
                  "--run_summary"),
    ('{"model_name": "x"}', "is not a run summary (hpc-launch.run_summary/1"),
    ('{"schema": "hpc-launch.run_summary/1", "wandb": "my-team/proj/abc"}', "wandb must be dict, not str"),
    ('{"schema": "hpc-launch.run_summary/1", "schema": "hpc-launch.run_summary/1"}', "duplicate key 'schema'"),
    ("[]", "must be a mapping, not a list"),
])
def test_bad_run_summary(capsys, tmp_path, content, message):
    path = tmp_path / "run_summary.json"
    path.write_text(content)
    code, _, err = main(capsys, "--run_summary", str(path), "--dry_run")
    assert message in one_line_error(code, err)


@pytest.mark.registry
def test_manual_db_push_script_runs_from_the_repo_root_and_elsewhere(tmp_path):
    for cwd in (ROOT, tmp_path):
        proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "manual_db_push.py"), *FLAGS, "--dry-run"],
                              capture_output=True, text=True, cwd=cwd)
        assert proc.returncode == 0 and '"name": "org/tiny-sft"' in proc.stdout, proc.stderr
    result = run_cli("--help", module="hpc.registry")
    assert result.returncode == 0 and "--hf-model-id" in result.stdout and "--run-summary" in result.stdout
