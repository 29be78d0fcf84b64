"""hpc-launch --backend skypilot end to end on the local SLURM cluster through SkyPilot's Slurm infra, one cluster at
a time, under the network jail (see conftest.py); and what SkyPilot checks offline."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml

from hpc import ROOT

from conftest import cloud_python, run_cloud, slurm_jobs_of, unique_name
from helpers import interruptible

pytestmark = [pytest.mark.skypilot, pytest.mark.slurm]
CANARY = "canary-5d1e0c77-only-in-the-secrets-file"


def manifest(exp: Path) -> dict:
    return json.loads((exp / "manifest.json").read_text())


def test_examples_are_tasks_skypilot_accepts_as_they_are(sky):
    code = ("import sys, yaml, sky\n"
            "for path in sys.argv[1:]:\n"
            "    task = sky.Task.from_yaml_config(yaml.safe_load(open(path)))\n"
            "    print('accepted', path, len(task.resources))\n")
    paths = sorted(str(p) for p in (ROOT / "examples" / "sky").glob("*.yaml"))
    result = run_cloud("-c", code, *paths, env=sky.env)
    assert result.returncode == 0, result.stderr
    accepted = {Path(line.split()[1]).name for line in result.stdout.splitlines() if line.startswith("accepted ")}
    assert accepted == {"cpu.yaml", "gpu.yaml", "tpu.yaml"}


def test_help_and_a_slurm_dry_run_never_import_sky(sky, tmp_path):
    code = ("import sys, contextlib, io\nfrom hpc import launch\n"
            "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
            "    launch.main(['--help'])\n"
            "assert 'sky' not in sys.modules, 'help imported sky'\n"
            f"code = launch.main(['--cluster', 'local', '--job_type', 'run', '--command', 'echo', '--dry_run', "
            f"'--no-validate', '--experiments_dir', {str(tmp_path)!r}])\n"
            "print('imported' if 'sky' in sys.modules else 'not imported', code)\n")
    result = run_cloud("-c", code, env=sky.env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "not imported 0"


def test_dry_run_validates_offline_and_shows_the_optimizers_choice(sky, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"resources": {"acclerators": "H100:1"}, "run": "echo"}))
    result = sky.launch("--task", str(bad), "--dry_run", "--experiments_dir", str(tmp_path / "exp"))
    assert result.returncode == 2 and "SkyPilot refused the run task" in result.stderr, result.stderr
    assert not (tmp_path / "exp").exists()
    result = sky.launch("--job_type", "run", "--command", "echo hi", "--cloud-provider", "gcp,slurm/localslurm",
                        "--dry_run", "--validate", "--experiments_dir", str(tmp_path / "exp"), "--job_name", "opt")
    assert result.returncode == 0, result.stderr
    chosen = [line for line in result.stdout.splitlines() if "✔" in line]  # gcp is not enabled: the fallback is
    assert chosen and "Slurm" in chosen[0], result.stdout
    assert (tmp_path / "exp" / "opt" / "sky" / "run.yaml").is_file()


def test_task_with_setup_envs_workdir_mount_and_secret_then_a_failing_job_on_the_same_cluster(sky, tmp_path):
    workdir, data = tmp_path / "wd", tmp_path / "data"
    workdir.mkdir()
    data.mkdir()
    (workdir / "bench.py").write_text("import os; print('bench.py says', os.environ['GREETING'])\n")
    (data / "input.txt").write_text("mounted data\n")
    secrets = tmp_path / "secrets.env"
    secrets.write_text(f"HPC_CANARY={CANARY}\n")
    secrets.chmod(0o600)
    task = tmp_path / "task.yaml"
    task.write_text(yaml.safe_dump({
        "name": "e2e", "resources": {"infra": "slurm/localslurm", "cpus": "1+", "memory": "1+"},
        "envs": {"GREETING": "hello-from-envs"}, "workdir": str(workdir),
        "file_mounts": {"/tmp/hpc-sky-e2e-mount": str(data)},
        "setup": "echo setup-ran-on-$(hostname)",
        "run": ("python3 bench.py\ncat /tmp/hpc-sky-e2e-mount/input.txt\n"
                "echo \"secret sha256 $(printf %s \"$HPC_CANARY\" | sha256sum | cut -c1-16)\"\n"
                "mkdir -p outputs && echo metric=0.9 > outputs/result.txt\n")}))
    exp, cluster = tmp_path / "exp", unique_name("reuse")
    first = sky.launch("--task", str(task), "--cluster-name", cluster, "--secrets-env", str(secrets),
                       "--experiments_dir", str(exp), "--job_name", "first")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr
    assert f"launching SkyPilot cluster {cluster}" in first.stdout
    log = "".join(p.read_text() for p in (exp / "first" / "logs").glob("*.out"))
    assert "bench.py says hello-from-envs" in log and "mounted data" in log and "setup-ran-on-" in first.stdout
    assert f"secret sha256 {hashlib.sha256(CANARY.encode()).hexdigest()[:16]}" in log
    assert (exp / "first" / "outputs" / "result.txt").read_text() == "metric=0.9\n"  # synced back
    job = manifest(exp / "first")["jobs"][0]
    assert job["job_id"] == f"{cluster}/1" and job["state"] == "COMPLETED" and job["exit_code"] == "0"
    status = run_cloud("-m", "hpc.launch", "status", str(exp / "first"), env=sky.env)
    assert status.returncode == 0 and "COMPLETED" in status.stdout, status.stdout + status.stderr
    listed = run_cloud("-m", "hpc.launch", "list", "--experiments_dir", str(exp), env=sky.env)
    assert "first" in listed.stdout and "COMPLETED" in listed.stdout, listed.stdout + listed.stderr

    second = sky.launch("--job_type", "run", "--command", "echo second job; exit 7", "--workdir", str(workdir),
                        "--cluster-name", cluster, "--down", "--experiments_dir", str(exp),
                        "--job_name", "second")
    assert second.returncode == 1, second.stdout[-3000:] + second.stderr
    assert f"reusing SkyPilot cluster {cluster}" in second.stdout and "exit code 7" in second.stdout
    job = manifest(exp / "second")["jobs"][0]
    assert job["job_id"] == f"{cluster}/2" and job["state"] == "FAILED" and job["exit_code"] == "7"
    logs = run_cloud("-m", "hpc.launch", "logs", str(exp / "second"), env=sky.env)
    assert "second job" in logs.stdout, logs.stdout + logs.stderr
    assert slurm_jobs_of(cluster) == []
    for text in (first.stdout, first.stderr, second.stdout, second.stderr,
                 *(p.read_text(errors="replace") for p in exp.rglob("*") if p.is_file())):
        assert CANARY not in text


def test_two_nodes_see_both_ranks_and_ctrl_c_leaves_nothing_on_slurm(sky, tmp_path):
    exp, cluster = tmp_path / "exp", unique_name("two")
    env = {**os.environ, **sky.env,
           "PYTHONPATH": os.pathsep.join((str(ROOT), sky.env["PYTHONPATH"]))}
    proc = subprocess.Popen(
        [str(cloud_python()), "-u", "-m", "hpc.launch", "--backend", "skypilot", "--job_type", "run", "--command",
         'echo "rank=$SKYPILOT_NODE_RANK of $SKYPILOT_NUM_NODES on $SLURMD_NODENAME"; sleep 600',
         "--workdir", str(tmp_path), "--num_nodes", "2", "--cloud-provider", "slurm/localslurm/gpu",
         "--cluster-name", cluster, "--down", "--experiments_dir", str(exp), "--job_name", "two"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT, preexec_fn=interruptible)
    output: list[str] = []

    def pump() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            output.append(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        seen, deadline = set(), time.monotonic() + 600
        while seen != {"0", "1"} and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(1)
            seen = {rank for rank in ("0", "1") if any(f"rank={rank} of 2 on gpu" in line for line in list(output))}
        assert seen == {"0", "1"}, "".join(output)[-4000:]
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=300)
    finally:  # a failed test must not leave the launch (and its nodes) to the tests after it
        if proc.poll() is None:
            proc.kill()
            run_cloud("-c", f"from hpc.backends.skypilot import lifecycle; lifecycle.down({cluster!r})", env=sky.env)
    reader.join(timeout=10)
    assert proc.returncode == 130, "".join(output)[-3000:]
    assert slurm_jobs_of(cluster) == []
    job = manifest(exp / "two")["jobs"][0]
    assert job["state"] == "CANCELLED" and "Ctrl-C" in job["reason"]


@pytest.mark.ml
def test_two_node_train_then_consolidate_and_eval_on_one_cluster(sky, tmp_path):
    """LLaMA-Factory ZeRO-3 on 2 nodes (torchrun over SKYPILOT_NODE_IPS), then consolidate and eval exec'd on the
    same cluster. Paths are absolute: the cluster is this machine, and build/ is not in the synced repo. About four
    minutes."""
    tiny, exp, cluster = ROOT / "build" / "tiny", tmp_path / "exp", unique_name("tr")
    result = sky.launch("--cluster", "local", "--train_config_path", "examples/train/tiny_sft_zero3.yaml",
                        "--model_name_or_path", str(tiny / "model"), "--dataset_dir", str(tiny / "data"),
                        "--gpus_per_node", "0", "--num_nodes", "2", "--consolidate",
                        "--eval_tasks", str(tiny / "data" / "tiny_eval.json"), "--cloud-provider",
                        "slurm/localslurm/gpu", "--checkpoints_dir", str(tmp_path / "ckpt"), "--down",
                        "--cluster-name", cluster, "--experiments_dir", str(exp), "--job_name", "tr")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr
    jobs = manifest(exp / "tr")["jobs"]
    assert [(j["key"], j["job_id"], j["state"]) for j in jobs] == [
        ("train", f"{cluster}/1", "COMPLETED"), ("consolidate", f"{cluster}/2", "COMPLETED"),
        ("eval", f"{cluster}/3", "COMPLETED")]
    log = (exp / "tr" / "logs" / f"tr_{cluster}_1.out").read_text()
    assert "node rank 0 of 2" in log and "node rank 1 of 2" in log and "train_loss" in log
    assert json.loads((exp / "tr" / "eval" / "results.json").read_text())["examples"] > 0
    assert slurm_jobs_of(cluster) == []


def _allocations(cluster: str) -> list[str]:
    """AllocTRES of the SLURM jobs SkyPilot ran for `cluster` today (accounting keeps them after the end)."""
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-a", "-S", "now-1days", "-o", "JobName,AllocTRES"],
                         capture_output=True, text=True, check=True).stdout
    return [line.split("|", 1)[1] for line in out.splitlines() if line.split("|", 1)[0].startswith(cluster)]


def test_gpu_task_gets_typed_gpus_then_a_timeout_cancels_it_and_down_leaves_nothing(sky, tmp_path):
    """H100:1 lands on the local cluster's typed GRES (gpu:h100); a second job on that cluster outlives
    --timeout_minutes, is cancelled, and --down tears the cluster down."""
    exp, cluster = tmp_path / "exp", unique_name("gpu")
    gpu = sky.launch("--job_type", "run", "--command", 'echo "gpus per node: $SKYPILOT_NUM_GPUS_PER_NODE"',
                     "--workdir", str(tmp_path), "--accelerator", "H100:1", "--cloud-provider",
                     "slurm/localslurm/gpu", "--cluster-name", cluster, "--experiments_dir", str(exp),
                     "--job_name", "gpu")
    assert gpu.returncode == 0, gpu.stdout[-3000:] + gpu.stderr
    assert "gpus per node: 1" in "".join(p.read_text() for p in (exp / "gpu" / "logs").glob("*.out"))
    assert any("gres/gpu:h100=1" in tres for tres in _allocations(cluster)), _allocations(cluster)

    started = time.monotonic()
    slow = sky.launch("--job_type", "run", "--command", "echo started; sleep 600", "--workdir", str(tmp_path),
                      "--cluster-name", cluster, "--timeout_minutes", "0.75", "--down",
                      "--experiments_dir", str(exp), "--job_name", "slow")
    assert slow.returncode == 1, slow.stdout[-3000:] + slow.stderr
    assert time.monotonic() - started < 300  # not the 600 s the command asked for
    job = manifest(exp / "slow")["jobs"][0]
    assert job["state"] == "TIMEOUT" and job["reason"] == "cancelled after --timeout_minutes 0.75", job
    assert f"reusing SkyPilot cluster {cluster}" in slow.stdout and f"tearing down {cluster}" in slow.stdout
    assert slurm_jobs_of(cluster) == []
