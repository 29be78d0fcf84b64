"""--validate: `sbatch --test-only` per job before anything is written or submitted (fake SLURM tools on PATH)."""

from __future__ import annotations

import dataclasses
import os

import pytest

from helpers import materialized, run_cli
from hpc.backends.slurm import Backend
from hpc.backends.slurm.commands import controller_unreachable, refusal_reason, validate_argv
from hpc.errors import BackendError, LaunchError
from hpc.jobs import train
from hpc.options import LaunchOptions

ACCOUNT = "Invalid account or account/partition combination specified"
ACCEPTED = "sbatch: Job 99 to start at 2026-12-01T01:10:30 using 1 processors on nodes gpu1 in partition gpu"


@pytest.fixture
def slurm(tmp_path, monkeypatch):
    """Fake sbatch/scontrol/...: every call is logged to calls.log, --test-only scripts (stdin) to scripts.log.

    scontrol reports ClusterName $FAKE_CLUSTER (fails without it); sbatch --test-only refuses with
    $FAKE_REFUSE the scripts that contain $FAKE_REFUSE_IF (all when unset); sbatch --parsable prints job 4242.
    """
    bindir = tmp_path / "fakebin"
    bindir.mkdir()
    calls, scripts = tmp_path / "calls.log", tmp_path / "scripts.log"
    tools = {
        "scontrol": '[ -n "$FAKE_CLUSTER" ] || { echo "Unable to contact slurm controller" >&2; exit 1; }\n'
                    'echo "ClusterName             = $FAKE_CLUSTER"\n',
        "sbatch": 'case "$*" in *--test-only*)\n'
                  f'  script=$(cat); printf "%s\\n" "$script" >> {scripts}\n'
                  '  if [ -n "$FAKE_REFUSE" ] && printf "%s" "$script" | grep -q -- "${FAKE_REFUSE_IF:-.}"; then\n'
                  '    echo "allocation failure: $FAKE_REFUSE" >&2; exit 1; fi\n'
                  f'  echo "{ACCEPTED}" >&2; exit 0;;\n'
                  'esac\necho 4242\n',
    }
    for name in ("sbatch", "scontrol", "sacct", "squeue", "scancel"):
        tool = bindir / name
        tool.write_text(f'#!/bin/sh\necho "{name} $*" >> {calls}\n{tools.get(name, "")}')
        tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_CLUSTER", "local")

    class Slurm:
        def calls(self) -> list[str]:
            return calls.read_text().splitlines() if calls.exists() else []

        def scripts(self) -> str:
            return scripts.read_text() if scripts.exists() else ""

    return Slurm()


def _launch(tmp_path, *args: str, **env: str):
    """The CLI on the local profile, in a fresh process that sees the fake tools and FAKE_* settings."""
    return run_cli("--cluster", "local", "--experiments_dir", str(tmp_path / "exp"), "--job_name", "v", *args,
                   env={"PATH": os.environ["PATH"], "FAKE_CLUSTER": os.environ["FAKE_CLUSTER"], **env})


def _plan(train_yaml, tmp_path, **kw):
    return train.build_plan(LaunchOptions(cluster="local", train_config_path=str(train_yaml), job_name="v",
                                          experiments_dir=str(tmp_path / "exp"), **kw))


# --- argv and answers ------------------------------------------------------------------------------------------------

def test_validate_argv_has_the_array_but_never_a_dependency_or_a_script_path():
    assert validate_argv() == ["sbatch", "--test-only"]
    assert validate_argv("0-4%2") == ["sbatch", "--test-only", "--array=0-4%2"]


@pytest.mark.parametrize("stderr, expected", [
    (f"allocation failure: {ACCOUNT}\n", f"{ACCOUNT}; check --account/--partition"),
    ("sbatch: error: invalid partition specified: nosuch\nallocation failure: Invalid partition name specified\n",
     "invalid partition specified: nosuch; Invalid partition name specified; check --partition"),
    ("allocation failure: Invalid qos specification\n", "Invalid qos specification; check --qos and the limits"),
    ("allocation failure: QOSMaxWallDurationPerJobLimit\nallocation failure: Job violates accounting/QOS policy\n",
     "QOSMaxWallDurationPerJobLimit; Job violates accounting/QOS policy; check --qos"),
    ("allocation failure: Requested node configuration is not available\n",
     "Requested node configuration is not available; no node has that many GPUs"),
    ("sbatch: error: Batch job submission failed: Requested time limit is invalid (missing or exceeds some limit)\n",
     "Requested time limit is invalid (missing or exceeds some limit); ask for no more time than"),
    ("allocation failure: Something new\n", "Something new"),
    ("", "exit code 1"),
])
def test_refusal_reason_is_one_line_with_what_to_check(stderr, expected):
    reason = refusal_reason(stderr, 1)
    assert reason.startswith(expected) and "\n" not in reason


def test_an_unreachable_controller_is_not_a_refusal():
    assert controller_unreachable("allocation failure: Unable to contact slurm controller (connect failure)")
    assert not controller_unreachable(f"allocation failure: {ACCOUNT}")


# --- the backend verb ------------------------------------------------------------------------------------------------

def test_each_script_goes_to_test_only_on_stdin_without_dependency(slurm, train_yaml, tmp_path):
    plan = _plan(train_yaml, tmp_path, eval_tasks="build/tiny/data/tiny_eval.json", dependency="afterok:7")
    m = dataclasses.replace(materialized(plan), arrays={"eval": "0-3%2"})
    Backend().validate(plan, m, None, dry_run=False)
    assert slurm.calls() == ["sbatch --test-only", "sbatch --test-only --array=0-3%2"]
    assert slurm.scripts() == "".join(m.files[m.scripts[key]] for key in ("train", "eval"))
    assert not (tmp_path / "exp").exists()


def test_the_first_refused_job_is_named_with_slurms_reason(slurm, train_yaml, tmp_path, monkeypatch):
    plan = _plan(train_yaml, tmp_path, eval_tasks="build/tiny/data/tiny_eval.json")
    monkeypatch.setenv("FAKE_REFUSE", ACCOUNT)
    monkeypatch.setenv("FAKE_REFUSE_IF", "--job-name=v_eval")
    with pytest.raises(LaunchError) as err:
        Backend().validate(plan, materialized(plan), None, dry_run=False)
    assert str(err.value) == f"sbatch --test-only refused job 'eval': {ACCOUNT}; check --account/--partition"
    assert err.value.exit_code == 2 and len(slurm.calls()) == 2


def test_no_controller_is_a_slurm_failure_not_bad_input(slurm, train_yaml, tmp_path, monkeypatch):
    plan = _plan(train_yaml, tmp_path)
    monkeypatch.setenv("FAKE_REFUSE", "Unable to contact slurm controller (connect failure)")
    with pytest.raises(BackendError, match="could not check job 'train': Unable to contact") as err:
        Backend().validate(plan, materialized(plan), None, dry_run=False)
    assert err.value.exit_code == 1


# --- when the launcher validates -------------------------------------------------------------------------------------

def test_a_refusal_is_one_line_exit_2_with_nothing_written_or_submitted(slurm, train_yaml, tmp_path):
    result = _launch(tmp_path, "--train_config_path", str(train_yaml), FAKE_REFUSE=ACCOUNT)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == ("hpc-launch: error: sbatch --test-only refused job 'train': "
                             f"{ACCOUNT}; check --account/--partition\n")
    assert slurm.calls() == ["sbatch --test-only"] and not (tmp_path / "exp").exists()


def test_a_submission_validates_first_then_submits(slurm, train_yaml, tmp_path):
    result = _launch(tmp_path, "--train_config_path", str(train_yaml))
    assert result.returncode == 0, result.stderr
    calls = slurm.calls()
    assert calls[0] == "sbatch --test-only" and calls[1].startswith("sbatch --parsable ") and len(calls) == 2
    assert "train: job 4242" in result.stdout


def test_no_validate_skips_it(slurm, train_yaml, tmp_path):
    result = _launch(tmp_path, "--train_config_path", str(train_yaml), "--no-validate", FAKE_REFUSE=ACCOUNT)
    assert result.returncode == 0, result.stderr
    assert [c.split()[1] for c in slurm.calls()] == ["--parsable"]


def test_a_dry_run_validates_against_the_profiles_own_controller(slurm, train_yaml, tmp_path):
    result = _launch(tmp_path, "--train_config_path", str(train_yaml), "--dry_run", FAKE_REFUSE=ACCOUNT)
    assert result.returncode == 2 and "refused job 'train'" in result.stderr
    assert slurm.calls() == ["scontrol show config", "sbatch --test-only"] and not (tmp_path / "exp").exists()
    ok = _launch(tmp_path, "--train_config_path", str(train_yaml), "--dry_run")
    assert ok.returncode == 0 and "dry run: nothing submitted" in ok.stdout
    assert slurm.calls()[2:] == ["scontrol show config", "sbatch --test-only"]


@pytest.mark.parametrize("cluster", ["", "othercluster"])
def test_a_dry_run_skips_silently_without_the_profiles_controller(slurm, train_yaml, tmp_path, cluster):
    result = _launch(tmp_path, "--train_config_path", str(train_yaml), "--dry_run", FAKE_CLUSTER=cluster)
    assert result.returncode == 0 and result.stderr == ""
    assert slurm.calls() == ["scontrol show config"]


@pytest.mark.parametrize("cluster, why", [("", "none answers here"), ("othercluster", "this node's is cluster "
                                                                                      "'othercluster'")])
def test_an_explicit_validate_in_a_dry_run_needs_that_controller(slurm, train_yaml, tmp_path, cluster, why):
    result = _launch(tmp_path, "--train_config_path", str(train_yaml), "--dry_run", "--validate",
                     FAKE_CLUSTER=cluster)
    assert result.returncode == 2 and not (tmp_path / "exp").exists()
    assert result.stderr == (f"hpc-launch: error: --validate needs a SLURM controller of local, but {why}; run the "
                             "dry run on a local login node, or drop --validate\n")


def test_a_dry_run_with_no_validate_asks_slurm_nothing(slurm, train_yaml, tmp_path):
    result = _launch(tmp_path, "--train_config_path", str(train_yaml), "--dry_run", "--no-validate")
    assert result.returncode == 0 and slurm.calls() == []


def test_bad_input_reaches_no_slurm_command_even_with_validate(slurm, train_yaml, tmp_path):
    result = _launch(tmp_path, "--train_config_path", str(train_yaml), "--validate", "--num_nodes", "0")
    assert result.returncode == 2 and "--num_nodes must be at least 1" in result.stderr
    assert slurm.calls() == [] and not (tmp_path / "exp").exists()


def test_detection_and_validation_ask_for_the_config_once(slurm, train_yaml, tmp_path):
    result = run_cli("--experiments_dir", str(tmp_path / "exp"), "--job_name", "v", "--train_config_path",
                     str(train_yaml), "--dry_run", env={"PATH": os.environ["PATH"],
                                                         "FAKE_CLUSTER": os.environ["FAKE_CLUSTER"]})
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("hpc-launch: cluster local, ")  # detected from the controller's ClusterName
    assert slurm.calls() == ["scontrol show config", "sbatch --test-only"]
