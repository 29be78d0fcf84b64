"""Site rules as profile data, checked at launch: partition limits, GPUs per node, accounts, --export, GPU types.

Pure: plans are built and rendered in memory; nothing is written or submitted.
"""

import os
import re
import subprocess

import pytest
import yaml

from helpers import local_profile_data, script
from hpc.backends.slurm.script import sbatch_value
from hpc.context import resolve_resources
from hpc.errors import LaunchError
from hpc.jobs.train import build_plan
from hpc.options import LaunchOptions
from hpc.profiles import all_profiles, get_profile, load_profile


def _plan(train_yaml, tmp_path, cluster: str, **kw):
    base = dict(cluster=cluster, train_config_path=str(train_yaml), experiments_dir=str(tmp_path / "exp"),
                job_name="t1", dry_run=True)
    return build_plan(LaunchOptions(**{**base, **kw}))


def _time(text: str) -> str:
    return re.search(r"^#SBATCH --time=(\S+)$", text, re.MULTILINE).group(1)


# Frontier: walltime bins by node count on partition batch.

@pytest.mark.parametrize("nodes, time_limit", [(91, "02:00:00"), (92, "06:00:00"), (183, "06:00:00"),
                                               (184, "12:00:00"), (9472, "12:00:00")])
def test_frontier_bins_allow_their_limit(nodes, time_limit):
    r = resolve_resources(get_profile("frontier"), nodes=nodes, time_limit=time_limit, account="abc123")
    assert (r.nodes, r.time_limit, r.partition) == (nodes, time_limit, "batch")


@pytest.mark.parametrize("nodes, time_limit, limit, size", [(91, "02:00:01", "02:00:00", "1-91"),
                                                            (92, "06:00:01", "06:00:00", "92-183"),
                                                            (184, "12:00:01", "12:00:00", "184-9472")])
def test_frontier_refuses_more_time_than_the_bin(nodes, time_limit, limit, size):
    with pytest.raises(LaunchError) as err:
        resolve_resources(get_profile("frontier"), nodes=nodes, time_limit=time_limit, account="abc123")
    assert str(err.value) == (f"--time_limit {time_limit} exceeds the {limit} limit of partition batch for jobs of "
                              f"{size} nodes on frontier; ask for --time_limit {limit} or less (jobs can requeue "
                              "and resume)")


def test_frontier_default_time_is_capped_to_the_bin(train_yaml, tmp_path):
    assert _time(script(_plan(train_yaml, tmp_path, "frontier", account="abc123", num_nodes=2), "train")) == "02:00:00"
    assert _time(script(_plan(train_yaml, tmp_path, "frontier", account="abc123", num_nodes=100, job_name="t2"),
                        "train")) == "06:00:00"
    assert resolve_resources(get_profile("frontier"), nodes=184, account="a").time_limit == "12:00:00"


def test_frontier_node_caps_are_per_partition():
    frontier = get_profile("frontier")
    with pytest.raises(LaunchError, match="--num_nodes 9473 exceeds the 9472 nodes a job may use on partition batch "
                                          "of frontier; ask for --num_nodes 9472 or fewer"):
        resolve_resources(frontier, nodes=9473, account="a")
    with pytest.raises(LaunchError, match="--num_nodes 65 exceeds the 64 nodes .* partition extended"):
        resolve_resources(frontier, partition="extended", nodes=65, account="a")
    assert resolve_resources(frontier, partition="extended", nodes=64, account="a").time_limit == "12:00:00"
    long = resolve_resources(frontier, partition="extended", time_limit="24:00:00", account="a")
    assert long.time_limit == "1-00:00:00"


# TACC: node caps, whole nodes with all their GPUs, no --export.

def test_vista_gh_takes_64_nodes_not_65(train_yaml, tmp_path):
    assert "#SBATCH --nodes=64\n" in script(_plan(train_yaml, tmp_path, "vista", num_nodes=64), "train")
    with pytest.raises(LaunchError, match="--num_nodes 65 exceeds the 64 nodes a job may use on partition gh of vista"):
        _plan(train_yaml, tmp_path, "vista", num_nodes=65, job_name="t2")


def test_lonestar_caps_gpu_a100_at_8_nodes_and_runs_3_processes_per_node(train_yaml, tmp_path):
    with pytest.raises(LaunchError, match="--num_nodes 9 exceeds the 8 nodes a job may use on partition gpu-a100"):
        _plan(train_yaml, tmp_path, "lonestar", num_nodes=9)
    plan = _plan(train_yaml, tmp_path, "lonestar", num_nodes=8, job_name="t2")
    text = script(plan, "train")
    assert plan.job("train").resources.gpus_per_node == 3
    assert "--nnodes=8 --nproc_per_node=3" in text
    assert "--gres" not in text and "--gpus-per-node" not in text and "--mem" not in text


def test_lonestar_dev_queue_limits_apply_when_it_is_used():
    lonestar = get_profile("lonestar")
    assert resolve_resources(lonestar, partition="gpu-a100-dev").time_limit == "02:00:00"
    with pytest.raises(LaunchError, match="exceeds the 02:00:00 limit of partition gpu-a100-dev on lonestar"):
        resolve_resources(lonestar, partition="gpu-a100-dev", time_limit="03:00:00")


@pytest.mark.parametrize("cluster", ["vista", "lonestar"])
def test_tacc_scripts_do_not_use_export(train_yaml, tmp_path, cluster):
    text = script(_plan(train_yaml, tmp_path, cluster), "train")
    assert not [line for line in text.splitlines() if line.startswith("#SBATCH --export")]
    assert "srun --nodes=" in text and "srun --export" not in text
    assert "unset SLURM_EXPORT_ENV" in text


def test_tacc_script_resets_the_inherited_environment(train_yaml, tmp_path):
    text = script(_plan(train_yaml, tmp_path, "vista"), "train")
    start = text.index("unset SLURM_EXPORT_ENV")
    block = text[start:text.index("\n# Modules", start)]  # up to the modules vista loads
    env = {"PATH": "/venv/bin:/usr/bin:/bin", "VIRTUAL_ENV": "/venv", "HF_TOKEN": "hf_x", "openai_api_key": "k",
           "SLURM_EXPORT_ENV": "NONE", "PYTHONPATH": "/x", "DC_AGENT_SECRET_ENV": "/s", "TOKENIZERS_PARALLELISM": "0"}
    out = subprocess.run(["bash", "-c", f"set -euo pipefail\n{block}\nenv"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    names = {line.split("=", 1)[0] for line in out.stdout.splitlines()}
    assert not names & {"HF_TOKEN", "openai_api_key", "SLURM_EXPORT_ENV", "PYTHONPATH", "VIRTUAL_ENV"}
    assert {"DC_AGENT_SECRET_ENV", "TOKENIZERS_PARALLELISM"} <= names
    assert "PATH=/usr/bin:/bin" in out.stdout.splitlines()


def test_other_clusters_keep_export_none(train_yaml, tmp_path):
    text = script(_plan(train_yaml, tmp_path, "local"), "train")
    assert "#SBATCH --export=NONE\n" in text and "srun --export=ALL " in text and "unset SLURM_EXPORT_ENV" not in text


# Accounts.

@pytest.mark.parametrize("cluster", ["jureca", "juwels", "jupiter", "frontier", "nyutorch"])
def test_account_required_refuses_a_launch_without_account(train_yaml, tmp_path, cluster):
    with pytest.raises(LaunchError, match=rf"^{cluster} runs no job without an account: pass --account PROJECT"):
        _plan(train_yaml, tmp_path, cluster, dry_run=False)
    assert "#SBATCH --account=proj1\n" in script(_plan(train_yaml, tmp_path, cluster, account="proj1"), "train")
    preview = _plan(train_yaml, tmp_path, cluster)  # a dry run previews, and says what the real launch needs
    assert f"{cluster} runs no job without an account: the real launch needs --account PROJECT" in preview.notes


def test_account_from_the_profile_is_enough(train_yaml, tmp_path, user_profiles):
    user_profiles("budget", account_required=True, account="lab")
    assert "#SBATCH --account=lab\n" in script(_plan(train_yaml, tmp_path, "budget"), "train")
    user_profiles("nobudget", account_required=True, account=None)
    with pytest.raises(LaunchError, match="--account"):
        _plan(train_yaml, tmp_path, "nobudget", dry_run=False)


def test_nyutorch_gives_a_job_at_most_3_nodes():
    with pytest.raises(LaunchError, match="--num_nodes 4 exceeds the 3 nodes a job may use on nyutorch"):
        resolve_resources(get_profile("nyutorch"), nodes=4, account="a")


# GPU types (Perlmutter's 80 GB nodes).

def test_perlmutter_gpu_type_selects_the_constraint(train_yaml, tmp_path):
    default = script(_plan(train_yaml, tmp_path, "perlmutter"), "train")
    assert "#SBATCH --constraint=gpu\n" in default and "hbm80g" not in default
    big = _plan(train_yaml, tmp_path, "perlmutter", gpu_type="A100-80GB", job_name="t2")
    text = script(big, "train")
    assert "#SBATCH --constraint=gpu&hbm80g\n" in text and "#SBATCH --constraint=gpu\n" not in text
    assert big.job("train").resources.gpu_type == "A100-80GB"
    upstream = _plan(train_yaml, tmp_path, "perlmutter", gpus_type="a100-80gb", job_name="t3")
    assert "#SBATCH --constraint=gpu&hbm80g\n" in script(upstream, "train")


def test_unknown_gpu_type_lists_the_known_ones(train_yaml, tmp_path):
    with pytest.raises(LaunchError, match="^--gpu_type H100 is not known on perlmutter; known: A100-40GB, A100-80GB$"):
        _plan(train_yaml, tmp_path, "perlmutter", gpu_type="H100")
    with pytest.raises(LaunchError, match="--gpu_type H100 is not known on local"):
        _plan(train_yaml, tmp_path, "local", gpu_type="H100")
    with pytest.raises(LaunchError, match="--gpu_type A100-80GB and --gpus_type A100-40GB disagree"):
        _plan(train_yaml, tmp_path, "perlmutter", gpu_type="A100-80GB", gpus_type="A100-40GB")


def test_sbatch_lines_take_constraint_syntax_but_not_shell_or_spaces():
    for value in ("--constraint=gpu&hbm80g", "--constraint=[rack1|rack2]*2", "--constraint=!bad"):
        assert sbatch_value(value) == value
    for value in ("gpu hbm80g", "a'b", 'a"b', "x#y", "a\nb"):
        with pytest.raises(LaunchError, match="cannot go on an #SBATCH line"):
            sbatch_value(value)


# dip, and every shipped profile.

def test_dip_is_retired_with_a_reason():
    with pytest.raises(LaunchError) as err:
        get_profile("dip")
    message = str(err.value)
    assert "\n" not in message and message.startswith("cluster 'dip' was retired: it has no SLURM")
    assert "--cluster alpha or capella" in message


def test_every_shipped_profile_loads_with_limits_that_fit():
    loaded = {p.name: p for p in all_profiles(os.environ | {"HPC_LAUNCH_PROFILES": ""})}
    assert "dip" not in loaded
    assert {"lonestar", "vista", "frontier", "perlmutter", "nyutorch", "capella", "alpha", "lrz"} <= set(loaded)
    for p in loaded.values():
        default = resolve_resources(p, account=p.account or "acct")
        assert default.gpus_per_node == p.gpus_per_node
        for name, limits in p.partitions.items():
            assert resolve_resources(p, partition=name, nodes=limits.max_nodes or 1, account="acct")
    assert (loaded["capella"].cpus_per_node, loaded["capella"].max_time) == (56, "7-00:00:00")
    assert loaded["alpha"].cpus_per_node == 46
    assert loaded["lrz"].partition == "mcml-hgx-h100-94x4"
    assert [p.name for p in loaded.values() if not p.slurm.export_none] == ["lonestar", "vista"]


def _write(tmp_path, **changes):
    path = tmp_path / "mycluster.yaml"
    path.write_text(yaml.safe_dump(local_profile_data(name="mycluster", **changes)))
    return path


@pytest.mark.parametrize("changes, expected", [
    ({"partitions": {"gpu": {"max_node": 2}}}, r"partitions\.gpu: must be a mapping with keys among max_nodes"),
    ({"partitions": {"gpu": {"max_nodes": 0}}}, r"partitions\.gpu\.max_nodes must be a whole number"),
    ({"partitions": {"cpu": {"max_time": "soon"}}}, r"partitions\.cpu\.max_time 'soon' is not a SLURM time"),
    ({"partitions": {"cpu": {"max_time": 24}}}, r"partitions\.cpu\.max_time must be a quoted SLURM time"),
    ({"partitions": {"gpu": {"time_by_nodes": [[2, "01:00:00"], [1, "02:00:00"]]}}}, "node counts must rise"),
    ({"partitions": {"gpu": {"time_by_nodes": [[1, "13:00:00"]]}}}, "has a time above its max_time 12:00:00"),
    ({"partitions": {"gpu": {"time_by_nodes": [91, "02:00:00"]}}}, r"must be a list of \[up to N nodes, max time\]"),
    ({"partitions": {"gpu": {"max_time": "24:00:00"}}}, "contradicts max_time 12:00:00 of the default partition"),
    ({"partitions": {"cpu": {"max_nodes": 3}}}, r"partitions\.cpu\.max_nodes exceeds max_nodes 2"),
    ({"partitions": {"gpu x": {}}}, "is not one sbatch can take"),
    ({"gpu_types": ["big"]}, "key 'gpu_type' must name the default of gpu_types"),
    ({"gpu_types": "big"}, "key 'gpu_types' must be list"),
    ({"slurm": {"export_none": "no"}}, "key 'slurm.export_none' must be bool"),
    ({"slurm": {"gpu_constraints": {"big": "--constraint=big"}}}, "key 'slurm.gpu_constraints' must be dict"),
])
def test_bad_site_rules_are_refused_on_load(tmp_path, changes, expected):
    with pytest.raises(LaunchError, match=expected):
        load_profile(_write(tmp_path, **changes))


def test_limits_of_another_partition_apply_when_it_is_used(train_yaml, tmp_path, user_profiles):
    user_profiles("parts", partitions={"cpu": {"max_nodes": 1, "max_time": "01:00:00"}})
    with pytest.raises(LaunchError, match="--time_limit 02:00:00 exceeds the 01:00:00 limit of partition cpu on parts"):
        _plan(train_yaml, tmp_path, "parts", partition="cpu", time_limit="02:00:00")
    with pytest.raises(LaunchError, match="--num_nodes 2 exceeds the 1 nodes a job may use on partition cpu"):
        _plan(train_yaml, tmp_path, "parts", partition="cpu", num_nodes=2)
    assert _time(script(_plan(train_yaml, tmp_path, "parts", partition="cpu"), "train")) == "01:00:00"
