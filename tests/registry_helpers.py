"""Shared by the registry tests (tests/test_registry_*.py): the CLI flags, an in-process hpc-registry runner that
checks the canary key is never printed, the one-line error check, and a run_summary.json written by the job side.
Their fixtures (postgrest, wandb_api, pg, registry_db, no_real_registry_services) are in tests/conftest.py."""

from __future__ import annotations

from hpc import registry
from hpc.jobside.run_summary import build_summary, write_json
from postgrest_standin import CANARY_KEY

FLAGS = ("--hf-model-id", "org/tiny-sft", "--base-model", "Qwen/Qwen3-0.6B", "--dataset-name", "org/ds1,org/ds2",
         "--training-type", "sft", "--agent-name", "terminus")


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
