"""The experiment directory: written whole or not at all; dry-run directories replaced, launched ones kept.
The manifest: typed, replaced atomically, and manifests of hpc-launch 0.1 (no schema) still read."""

import json

import pytest

from hpc import manifest as manifests
from hpc.backends import Materialized
from hpc.errors import LaunchError
from hpc.experiment import write_experiment
from hpc.manifest import SCHEMA, Manifest, State
from hpc.profiles import get_profile
from hpc.spec import Command, Job, Plan, Prelude, Resources, parse_dependency

SCRIPT_REL = "sbatch/train.sbatch"


def _plan(tmp_path) -> Plan:
    resources = Resources(nodes=1, gpus_per_node=0, cpus_per_node=1, mem=None, time_limit="00:10:00")
    prelude = Prelude(env={}, secrets_path=None, offline=False, tunnel=None, workdir=tmp_path)
    job = Job(key="train", job_type="train", name="exp1", resources=resources, prelude=prelude,
              body=Command(command=["true"]))
    return Plan(experiment_dir=tmp_path / "exps" / "exp1", profile=get_profile("local"), jobs=(job,),
                files={"configs/train.yaml": "a: 1\n"})


def _materialized(script="#!/bin/bash\ntrue\n") -> Materialized:
    """What a backend would make of the plan: one script with the given text."""
    return Materialized(files={SCRIPT_REL: script}, scripts={"train": SCRIPT_REL},
                        commands={"train": ["sbatch", "--parsable", SCRIPT_REL]}, arrays={})


def _write(plan: Plan, dry_run: bool, script="#!/bin/bash\ntrue\n") -> Manifest:
    m = _materialized(script)
    manifest = Manifest.for_plan(plan, "slurm", m.scripts, m.arrays, dry_run)
    write_experiment(plan, m, manifest)
    return manifest


def test_writes_scripts_configs_logs_and_manifest(tmp_path):
    manifest = _write(_plan(tmp_path), dry_run=True)
    d = tmp_path / "exps" / "exp1"
    assert (d / "sbatch/train.sbatch").read_text().endswith("true\n")
    assert (d / "configs/train.yaml").read_text() == "a: 1\n"
    assert (d / "logs").is_dir()
    on_disk = json.loads((d / "manifest.json").read_text())
    assert on_disk == json.loads(manifest.to_json())
    assert manifests.read(d) == manifest
    job = on_disk["jobs"][0]
    assert job["job_id"] is None and job["submitted_at"] is None and job["dependencies"] == []
    assert job["state"] == "PLANNED"
    assert job["script"] == str(d / "sbatch/train.sbatch")
    assert [p.name for p in (tmp_path / "exps").iterdir()] == ["exp1"]  # no staging leftovers


def test_a_dry_run_directory_is_replaced(tmp_path):
    _write(_plan(tmp_path), dry_run=True, script="#!/bin/bash\nold\n")
    _write(_plan(tmp_path), dry_run=False, script="#!/bin/bash\nnew\n")
    assert (tmp_path / "exps/exp1/sbatch/train.sbatch").read_text().endswith("new\n")


def test_a_launched_experiment_is_never_overwritten(tmp_path):
    _write(_plan(tmp_path), dry_run=False)
    manifest = manifests.read(tmp_path / "exps/exp1")
    manifest.jobs[0].job_id = "42"
    manifest.write()
    assert [p.name for p in (tmp_path / "exps/exp1").iterdir() if p.name.startswith(".")] == []  # no temp file
    assert manifests.read(tmp_path / "exps/exp1").jobs[0].job_id == "42"
    with pytest.raises(LaunchError, match="already exists; choose another --job_name"):
        _write(_plan(tmp_path), dry_run=False)


def test_a_failed_write_leaves_nothing(tmp_path):
    bad = _plan(tmp_path)
    bad.files["configs"] = "a file where a directory must go"
    with pytest.raises(LaunchError, match="cannot write the experiment directory"):
        _write(bad, dry_run=True)
    assert list((tmp_path / "exps").iterdir()) == []


def test_an_old_manifest_without_schema_is_upgraded_on_read(tmp_path):
    """Manifests written by hpc-launch 0.1 (slurm_job_id, sbatch_argv, launcher state words) read as today's."""
    d = tmp_path / "old_exp"
    d.mkdir()
    argv = ["sbatch", "--parsable", str(d / "sbatch/train.sbatch")]
    old = {
        "experiment": "old_exp", "experiment_dir": "/somewhere/else/old_exp", "cluster": "local", "dry_run": False,
        "created_at": "2026-11-01T10:00:00+00:00",
        "jobs": [
            {"key": "train", "name": "old_exp", "job_type": "train", "script": str(d / "sbatch/train.sbatch"),
             "dependencies": [{"kind": "afterany", "slurm_job_id": "77"}], "array": None, "slurm_job_id": "101",
             "submitted_at": "2026-11-01T10:00:01+00:00", "sbatch_argv": argv, "state": "COMPLETED",
             "exit_code": "0:0", "elapsed": "00:01:00"},
            {"key": "eval", "name": "old_exp_eval", "job_type": "eval", "script": str(d / "sbatch/eval.sbatch"),
             "dependencies": [{"kind": "afterok", "job": "train"}], "array": None, "slurm_job_id": "102",
             "submitted_at": "2026-11-01T10:00:02+00:00", "sbatch_argv": ["sbatch", "--parsable", "x"],
             "state": "cancelled_by_launcher"},
        ],
    }
    (d / "manifest.json").write_text(json.dumps(old))
    manifest = manifests.read(d)
    assert isinstance(manifest, Manifest)
    assert manifest.schema == SCHEMA and manifest.backend == "slurm"
    assert manifest.experiment_dir == str(d.absolute())  # where it is now
    train, evaluate = manifest.jobs
    assert train.job_id == "101" and train.submit_argv == argv and train.state is State.COMPLETED
    assert train.exit_code == "0:0" and train.elapsed == "00:01:00"
    assert train.dependencies == [{"kind": "afterany", "external": "77"}]
    assert evaluate.job_id == "102" and evaluate.submit_argv == ["sbatch", "--parsable", "x"]
    assert evaluate.state is State.CANCELLED
    assert evaluate.dependencies == [{"kind": "afterok", "job": "train"}]
    assert [j.key for j in manifest.submitted] == ["train", "eval"]
    manifest.write()  # written back in today's shape
    data = json.loads((d / "manifest.json").read_text())
    assert data["schema"] == SCHEMA and data["backend"] == "slurm"
    assert "slurm_job_id" not in data["jobs"][0] and data["jobs"][1]["state"] == "CANCELLED"
    assert manifests.read(d) == manifest


@pytest.mark.parametrize("text", ["afterok:1?afterok:2", "after_ok:1", "afterok:", "12a"])
def test_bad_dependencies(text):
    with pytest.raises(LaunchError, match="--dependency"):
        parse_dependency(text)
