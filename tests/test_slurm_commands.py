"""Command builders and parsers of the SLURM backend (hpc.backends.slurm.commands): pure functions, no SLURM needed."""

from pathlib import Path

from hpc.backends.slurm.commands import (array_size, combine, dependency_option, parse_sacct, parse_squeue, sacct_argv,
                                         sbatch_argv, submit_env)
from hpc.spec import Dependency


def test_sbatch_argv_is_a_list_with_parsable():
    assert sbatch_argv(Path("/e/x.sbatch")) == ["sbatch", "--parsable", "/e/x.sbatch"]


def test_dependencies_group_by_kind_and_resolve_launch_jobs():
    deps = [Dependency("afterok", job="train"), Dependency("afterok", external="7"),
            Dependency("afterany", external="9")]
    assert dependency_option(deps, {"train": "100"}) == "--dependency=afterok:100:7,afterany:9"
    assert dependency_option([], {}) is None
    argv = sbatch_argv(Path("/e/x.sbatch"), deps, {"train": "100"})
    assert argv == ["sbatch", "--parsable", "--dependency=afterok:100:7,afterany:9", "/e/x.sbatch"]


def test_submit_env_drops_slurm_input_variables_but_keeps_slurm_conf():
    env = submit_env({"PATH": "/bin", "SBATCH_PARTITION": "x", "SLURM_JOB_ID": "5", "SLURM_CONF": "/etc/s.conf",
                      "SLURM_CPU_BIND": "none", "PMIX_RANK": "0", "HOME": "/root"})
    assert env == {"PATH": "/bin", "SLURM_CONF": "/etc/s.conf", "HOME": "/root"}


def test_one_sacct_call_for_many_jobs():
    argv = sacct_argv(["11", "12", "13"])
    assert argv[:2] == ["sacct", "-X"] and argv[-2:] == ["-j", "11,12,13"]


def test_parse_sacct_and_squeue():
    states = parse_sacct("11|train|COMPLETED|0:0|00:00:21\n12|eval|CANCELLED by 0|0:15|00:00:01\nnoise\n")
    assert states["11"].state == "COMPLETED" and states["11"].done and states["11"].exit_code == "0:0"
    assert states["12"].state == "CANCELLED" and states["12"].done
    pending = parse_squeue("13|x|PENDING\n")
    assert pending["13"].state == "PENDING" and not pending["13"].done


def test_array_size_counts_tasks():
    assert [array_size(s) for s in ("0-4%2", "1,4%2", "0-999", "3", "1,4,7-9%1")] == [5, 2, 1000, 1, 5]


def test_an_array_is_done_only_when_every_task_is_accounted_for():
    partial = parse_sacct("146_0|x|COMPLETED|0:0|00:00:02\n146_2|x|COMPLETED|0:0|00:00:01\n")
    assert not combine("146", partial, tasks=3).done  # 146_1 not recorded yet: not finished
    full = parse_sacct("146_0|x|COMPLETED|0:0|1\n146_1|x|FAILED|1:0|1\n146_2|x|COMPLETED|0:0|1\n")
    state = combine("146", full, tasks=3)
    assert state.state == "FAILED" and state.exit_code == "1:0" and state.elapsed == "2/3 tasks COMPLETED"
    pending = parse_sacct("146_[0-2%2]|x|PENDING|0:0|00:00:00\n")
    assert combine("146", pending, tasks=3).state == "PENDING"
    never_ran = combine("146", parse_sacct("146_[0-2%2]|x|CANCELLED by 0|0:0|00:00:00\n"), tasks=3)
    assert never_ran.done and never_ran.state == "CANCELLED"  # one record for the whole cancelled array
    assert combine("146", full) is None and combine("146_1", full).state == "FAILED"  # plain jobs: exact id
