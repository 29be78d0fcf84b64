"""The experiment directory: written whole or not at all; dry-run directories replaced, launched ones kept."""

import json

import pytest

from hpc.errors import LaunchError
from hpc.plan import JobSpec, LaunchPlan, parse_dependency, write_experiment, write_json


def _plan(tmp_path, script="#!/bin/bash\ntrue\n") -> LaunchPlan:
    job = JobSpec(key="train", job_type="train", name="exp1", script=script, script_path="sbatch/train.sbatch")
    return LaunchPlan(experiment_dir=tmp_path / "exps" / "exp1", cluster="local", jobs=(job,),
                      files={"configs/train.yaml": "a: 1\n"})


def test_writes_scripts_configs_logs_and_manifest(tmp_path):
    manifest = write_experiment(_plan(tmp_path), dry_run=True)
    d = tmp_path / "exps" / "exp1"
    assert (d / "sbatch/train.sbatch").read_text().endswith("true\n")
    assert (d / "configs/train.yaml").read_text() == "a: 1\n"
    assert (d / "logs").is_dir()
    on_disk = json.loads((d / "manifest.json").read_text())
    assert on_disk == manifest
    job = on_disk["jobs"][0]
    assert job["slurm_job_id"] is None and job["submitted_at"] is None and job["dependencies"] == []
    assert job["script"] == str(d / "sbatch/train.sbatch")
    assert [p.name for p in (tmp_path / "exps").iterdir()] == ["exp1"]  # no staging leftovers


def test_a_dry_run_directory_is_replaced(tmp_path):
    write_experiment(_plan(tmp_path, "#!/bin/bash\nold\n"), dry_run=True)
    write_experiment(_plan(tmp_path, "#!/bin/bash\nnew\n"), dry_run=False)
    assert (tmp_path / "exps/exp1/sbatch/train.sbatch").read_text().endswith("new\n")


def test_a_launched_experiment_is_never_overwritten(tmp_path):
    manifest = write_experiment(_plan(tmp_path), dry_run=False)
    manifest["jobs"][0]["slurm_job_id"] = "42"
    write_json(tmp_path / "exps/exp1/manifest.json", manifest)
    with pytest.raises(LaunchError, match="already exists; choose another --job_name"):
        write_experiment(_plan(tmp_path), dry_run=False)


def test_a_failed_write_leaves_nothing(tmp_path):
    bad = _plan(tmp_path)
    bad.files["configs"] = "a file where a directory must go"
    with pytest.raises(OSError):
        write_experiment(bad, dry_run=True)
    assert list((tmp_path / "exps").iterdir()) == []


@pytest.mark.parametrize("text", ["afterok:1?afterok:2", "after_ok:1", "afterok:", "12a"])
def test_bad_dependencies(text):
    with pytest.raises(LaunchError, match="--dependency"):
        parse_dependency(text)
