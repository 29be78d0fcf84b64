"""Every job type's rendered scripts on several profiles, compared byte for byte with tests/golden/.

Each case is a real CLI dry run (in-process); the golden file holds what it printed and every file it wrote
(scripts and resolved configs), with the temporary directory shown as <TMP>. UPDATE_GOLDEN=1 rewrites those that
differ, after comparing: the run that rewrites a file still fails; review the diff, then rerun.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from hpc import ROOT
from hpc.launch import main

from helpers import TRAIN_YAML

GOLDEN = Path(__file__).parent / "golden"
UPDATE = bool(os.environ.get("UPDATE_GOLDEN"))  # read before the tests clear the environment
LOGIN_ENV = {"HOME": "/home/alice", "USER": "alice", "PATH": "/usr/bin:/bin", "SCRATCH": "/scratch/alice",
             "PROJECT": "/project/alice", "WORK": "/tacc/alice", "PSCRATCH": "/pscratch/alice"}
TRAIN = ["--train_config_path", "sft.yaml", "--num_nodes", "2"]
ZERO3 = ["--train_config_path", "sft.yaml", "--deepspeed", "ds_z3.json", "--gpus_per_node", "2", "--consolidate"]
DATAGEN = ["--job_type", "datagen", "--datagen_config", "dg.yaml", "--datagen_script", "gen.py",
           "--datagen_target_repo", "org/tasks", "--datagen_extra_args", "--num-tasks 10 --note 'a b'"]
TRACES = ["--enable_trace_gen", "--trace_target_repo", "org/traces", "--trace_agent_name", "terminus-2",
          "--trace_agent_kwargs", '{"temperature": 0.7}', "--trace_n_concurrent", "4"]

JSC = ["--account", "jscproj"]  # JSC runs no job without a budget (profile key account_required)
CASES = {
    "train_local": ["--cluster", "local", *TRAIN],
    "train_jureca": ["--cluster", "jureca", *TRAIN, *JSC],
    "train_perlmutter": ["--cluster", "perlmutter", *TRAIN],
    "train_vista": ["--cluster", "vista", *TRAIN],
    "train_jureca_tunnel": ["--cluster", "jureca", *TRAIN, *JSC, "--tunnel"],
    "chain_local": ["--cluster", "local", *ZERO3, "--eval_tasks", "heldout.json", "--eval_time_limit", "00:30:00"],
    "chain_netjureca_sync": ["--cluster", "netjureca", *ZERO3, *JSC, "--train_config_path", "push.yaml",
                             "--consolidate_output_repo", "org/model", "--report_to", "wandb"],
    "consolidate_local": ["--cluster", "local", "--job_type", "consolidate", "--consolidate_input", "zero_run",
                          "--dtype", "bf16", "--eval_tasks", "heldout.json"],
    "consolidate_vista": ["--cluster", "vista", "--job_type", "consolidate", "--consolidate_input", "org/run@v1",
                          "--consolidate_output_repo", "org/merged", "--public", "--dependency", "afterok:41"],
    "consolidate_jureca": ["--cluster", "jureca", *JSC, "--job_type", "consolidate", "--consolidate_input", "zero_run",
                           "--consolidate_output_repo", "org/merged"],
    "datagen_local": ["--cluster", "local", *DATAGEN, *TRACES, "--num_chunks", "3", "--datagen_config", "dg_local.yaml"],
    "datagen_vista": ["--cluster", "vista", *DATAGEN, "--server_wait_timeout", "600"],
    "datagen_jureca_traces": ["--cluster", "jureca", *JSC, "--job_type", "datagen", "--datagen_config", "dg.yaml",
                              "--no-enable_task_gen", "--trace_script", "gen.py", "--trace_input_path", "tasks",
                              *TRACES, "--chunk_size", "2"],
    "datagen_upstream_perlmutter": ["--cluster", "perlmutter", *DATAGEN, "--datagen_config", "upstream.yaml",
                                    "--datagen_extra_args", "--stage both --limit 200", *TRACES,
                                    "--trace_harbor_config", "harbor.yaml", "--num_chunks", "4"],
}


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A login node as a user sees it: a clean environment, a secrets file, the inputs of every case."""
    for key in list(os.environ):
        monkeypatch.delenv(key)
    for key, value in LOGIN_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("socket.gethostname", lambda: "jrlogin05.jureca")
    secrets = tmp_path / "secrets.env"
    secrets.write_text("HF_TOKEN=hf_never_in_a_script\n")
    secrets.chmod(0o600)
    monkeypatch.setenv("DC_AGENT_SECRET_ENV", str(secrets))
    (tmp_path / "sft.yaml").write_text(yaml.safe_dump(TRAIN_YAML))
    (tmp_path / "push.yaml").write_text(yaml.safe_dump({**TRAIN_YAML, "push_to_hub": True, "hub_model_id": "org/raw"}))
    (tmp_path / "ds_z3.json").write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    (tmp_path / "heldout.json").write_text("[]\n")
    zero = tmp_path / "zero_run" / "checkpoint-5"
    (zero / "global_step5").mkdir(parents=True)
    (zero / "latest").write_text("global_step5")
    (zero / "global_step5" / "zero_pp_rank_0_mp_rank_00_model_states.pt").write_text("")
    (tmp_path / "gen.py").write_text("print('generator')\n")
    (tmp_path / "dg.yaml").write_text(yaml.safe_dump({"engine": "vllm_local", "model": "Qwen/Qwen3-8B",
                                                      "chunk_size": 4, "chunk_parallelism": 2}))
    (tmp_path / "dg_local.yaml").write_text(yaml.safe_dump({
        "engine": "vllm_local", "model": "build/tiny/model", "chunk_size": 4, "chunk_parallelism": 2,
        "server": {"command": ["python", "{hpc_root}/examples/datagen/serve_tiny.py", "--model", "{model}", "--port",
                               "{port}"], "gpus": 1, "health_timeout": 120, "time_limit": "02:00:00"}}))
    (tmp_path / "upstream.yaml").write_text(yaml.safe_dump({  # upstream's datagen config format
        "engine": {"type": "vllm_local", "model": "Qwen/Qwen3-8B", "max_output_tokens": 4096, "vllm_local": {}},
        "backend": {"type": "vllm", "healthcheck_max_attempts": 40, "healthcheck_retry_delay": 15},
        "vllm_server": {"model_path": "Qwen/Qwen3-8B", "tensor_parallel_size": 2, "data_parallel_size": 2,
                        "max_model_len": 32768, "gpu_memory_utilization": 0.9, "reasoning_parser": "qwen3",
                        "time_limit": "24:00:00", "extra_args": ["--enable-prefix-caching"]},
        "extra_agent_kwargs": {"reasoning_effort": "medium"}, "chunk_array_max": 3}))
    (tmp_path / "harbor.yaml").write_text(yaml.safe_dump({"agents": [{"name": "terminus-2",
                                                                       "model_name": "placeholder/override-at-runtime"}]}))
    for i in range(5):
        (tmp_path / "tasks" / f"task_{i}").mkdir(parents=True)
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    jureca = yaml.safe_load((ROOT / "cluster_profiles" / "jureca.yaml").read_text())
    jureca.update(name="netjureca", internet_partition="dc-cpu-devel", dotenv=str(ROOT / "dotenv" / "jureca.env"))
    (profiles / "netjureca.yaml").write_text(yaml.safe_dump(jureca))
    monkeypatch.setenv("HPC_LAUNCH_PROFILES", str(profiles))
    return tmp_path


def _snapshot(exp: Path, stdout: str, tmp: Path) -> str:
    """What the dry run printed, then every script and config it wrote (copied job-side programs excepted)."""
    parts = [stdout]
    for path in sorted(p for p in exp.rglob("*") if p.is_file() and not p.is_symlink()):
        rel = path.relative_to(exp).as_posix()
        if rel == "manifest.json" or rel.endswith(".py"):
            continue
        parts.append(f"\n===== {rel}\n{path.read_text()}")
    return "".join(parts).replace(str(tmp), "<TMP>").replace(str(ROOT), "<ROOT>")


@pytest.mark.parametrize("case", sorted(CASES))
def test_dry_run_matches_golden(case, workdir, capsys):
    code = main([*CASES[case], "--job_name", "golden", "--experiments_dir", str(workdir / "exp"), "--dry_run"])
    out = capsys.readouterr()
    assert code == 0, out.err
    exp = workdir / "exp" / "golden"
    for script in exp.glob("sbatch/*.sbatch"):
        assert subprocess.run(["bash", "-n", str(script)]).returncode == 0, script
    snapshot = _snapshot(exp, out.out, workdir)
    assert "hf_never_in_a_script" not in snapshot
    golden = GOLDEN / f"{case}.txt"
    expected = golden.read_text() if golden.exists() else None
    if snapshot != expected and UPDATE:  # compared first: a rewritten golden file still fails this run
        golden.write_text(snapshot)
    assert expected is not None, f"no golden file {golden.name}; UPDATE_GOLDEN=1 writes it (then review and rerun)"
    assert snapshot == expected, (f"{golden.name} differs" + (" (rewritten: review the diff, then rerun)" if UPDATE
                                                               else "; UPDATE_GOLDEN=1 rewrites it"))
