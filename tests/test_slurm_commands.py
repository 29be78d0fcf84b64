"""Command builders and parsers of the SLURM backend (hpc.backends.slurm.commands): pure functions, no SLURM needed."""

from pathlib import Path

from hpc.backends.slurm.accounting import (array_indices, array_size, combine, parse_sacct, parse_squeue, sacct_argv,
                                           squeue_argv, to_explain, with_live)
from hpc.backends.slurm.commands import dependency_option, ranges, sbatch_argv, submit_env
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


def test_reasons_task_counts_and_failed_tasks():
    rows = parse_sacct("7|t|PENDING|0:0|00:00:00|Dependency\n8_0|a|COMPLETED|0:0|1|None\n8_1|a|FAILED|1:0|1|None\n"
                       "8_[2-4%2]|a|PENDING|0:0|0|JobArrayTaskLimit\n")
    assert rows["7"].reason == "Dependency" and rows["8_0"].reason == ""
    array = combine("8", rows, tasks=5)
    assert array.state == "PENDING" and array.reason == "JobArrayTaskLimit"
    assert array.tasks == {"COMPLETED": 1, "FAILED": 1, "PENDING": 3} and array.failed_tasks == (1,)
    assert parse_squeue("9|x|PENDING|JobHeldUser\n")["9"].reason == "JobHeldUser"
    assert squeue_argv(["9"])[-3:] == ["%i|%j|%T|%r", "-j", "9"] and "Reason" in sacct_argv(["9"])[4]


def test_squeue_explains_what_accounting_cannot():
    recorded = parse_sacct("7|t|PENDING|0:0|0|Dependency\n8|t|RUNNING|0:0|5|None\n9|t|COMPLETED|0:0|9|None\n"
                           "10_[0-4]|a|PENDING|0:0|0|None\n")
    # not recorded yet (11), pending (7: its recorded reason may be old), an array (10); never running or done jobs
    assert to_explain(["7", "8", "9", "10", "11"], recorded, {"10": 5}) == ["7", "10", "11"]
    live = parse_squeue("7|t|PENDING|Resources\n10_[0-4]|a|PENDING|JobArrayTaskLimit\n11|u|PENDING|Priority\n"
                        "8|t|RUNNING|None\n")
    merged = with_live(recorded, live)
    assert merged["7"].reason == "Resources"  # the controller's reason wins over the recorded one
    assert merged["7"].elapsed == "0" and merged["8"].elapsed == "5"  # accounting's row otherwise
    assert merged["8"].reason == "" and merged["11"].reason == "Priority" and merged["9"].state == "COMPLETED"
    assert combine("10", merged, tasks=5).reason == "JobArrayTaskLimit"


def test_ranges_and_indices_round_trip():
    assert ranges([9, 0, 1, 2, 4, 10, 11]) == "0-2,4,9-11"
    assert array_indices("0-2,4,9-11%3") == [0, 1, 2, 4, 9, 10, 11]
    from hpc.backends.slurm import Backend

    assert Backend().array_tasks("0-2,4%3") == [0, 1, 2, 4]  # what retry asks (accounting is imported only then)


def test_the_launch_token_finds_jobs_whose_answer_was_lost():
    from hpc.backends.slurm.commands import tagged

    out = "11|hpc-launch:ab12:train\n12_[0-3%2]|hpc-launch:ab12:traces\n13|hpc-launch:ffff:train\n14|\n"
    assert tagged(out, "hpc-launch:ab12") == ["11", "12"]
    assert sbatch_argv(Path("/e/x.sbatch"), comment="hpc-launch:ab12:train")[2] == "--comment=hpc-launch:ab12:train"


# --- exact command lines and parsed rows (guards found by benchmarks/mutation.py) --------------------------------

from hpc.backends.slurm.accounting import Row  # noqa: E402


def test_sacct_and_squeue_command_lines_are_exactly_what_slurm_is_asked():
    """-n no header, -P '|' without a trailing one, -X allocations only; squeue -h -t all so finished jobs still
    answer, in the format parse_squeue reads."""
    assert sacct_argv(["11", "12"]) == ["sacct", "-X", "-n", "-P",
                                        "--format=JobID,JobName,State,ExitCode,Elapsed,Reason", "-j", "11,12"]
    assert squeue_argv(["11", "12"]) == ["squeue", "-h", "-t", "all", "-o", "%i|%j|%T|%r", "-j", "11,12"]


def test_parse_sacct_reads_every_field_and_skips_noise_anywhere():
    text = ("sacct: warning: partial accounting\n"
            "11|train|COMPLETED|0:0|00:00:21\n"
            "12|eval||0:0|00:00:00|None\n"
            "13|gen|PENDING|0:0|00:00:00|Dependency\n")
    assert parse_sacct(text) == {
        "11": Row("11", "train", "COMPLETED", "0:0", "00:00:21", ""),  # five fields (no Reason column): no reason
        "12": Row("12", "eval", "UNKNOWN", "0:0", "00:00:00", ""),  # an empty state is UNKNOWN, not a crash
        "13": Row("13", "gen", "PENDING", "0:0", "00:00:00", "Dependency"),
    }


def test_parse_squeue_reads_id_name_state_and_reason():
    assert parse_squeue("13|gen|PENDING\n14|ev|PENDING|Priority\n") == {
        "13": Row("13", "gen", "PENDING", reason=""), "14": Row("14", "ev", "PENDING", reason="Priority")}


def test_the_controller_without_a_reason_keeps_the_recorded_one():
    recorded = parse_sacct("7|t|PENDING|0:0|0|Dependency\n")
    assert with_live(recorded, parse_squeue("7|t|PENDING|None\n"))["7"].reason == "Dependency"


def test_a_combined_array_row_carries_id_name_state_counts_and_summary():
    running = parse_sacct("5_0|gen|RUNNING|0:0|1|None\n5_[1-2]|gen|PENDING|0:0|0|None\n")
    assert combine("5", running, tasks=3) == Row("5", "gen", "RUNNING", reason="", tasks={"RUNNING": 1, "PENDING": 2})
    done = parse_sacct("5_0|gen|COMPLETED|0:0|1|None\n5_1|gen|COMPLETED|0:0|1|None\n")
    assert combine("5", done, tasks=2) == Row("5", "gen", "COMPLETED", "0:0", "2/2 tasks COMPLETED",
                                              tasks={"COMPLETED": 2})
    failed = parse_sacct("5_0|gen|FAILED|1:0|1|None\n5_1|gen|TIMEOUT|0:1|1|None\n")
    assert combine("5", failed, tasks=2) == Row("5", "gen", "FAILED", "1:0", "0/2 tasks COMPLETED",
                                                tasks={"FAILED": 1, "TIMEOUT": 1}, failed_tasks=(0, 1))


def test_a_state_word_slurm_adds_later_is_unknown_not_a_crash():
    from hpc.backends.slurm.commands import to_state
    from hpc.manifest import State

    assert to_state("SOMETHING_NEW") is State.UNKNOWN and not to_state("SOMETHING_NEW").done
    assert to_state("DEADLINE") is State.TIMEOUT and to_state("REQUEUED") is State.PENDING


def test_submit_env_drops_every_launcher_input_prefix():
    env = {"SALLOC_PARTITION": "a", "SRUN_CPUS_PER_TASK": "2", "PMI_RANK": "0", "PMIX_RANK": "0", "SBATCH_QOS": "q",
           "SLURM_NNODES": "2", "SALLOCATOR": "keep", "HOME": "/root"}
    assert submit_env(env) == {"SALLOCATOR": "keep", "HOME": "/root"}


def test_array_spec_and_sbatch_argv_carry_the_array():
    from hpc.backends.slurm.commands import array_spec
    from hpc.spec import Array

    assert array_spec(Array((0, 1, 2, 3, 4, 7), 2)) == "0-4,7%2"
    argv = sbatch_argv(Path("/e/x.sbatch"), [Dependency("afterany", external="9")], {}, "0-4,7%2", "tok:traces")
    assert argv == ["sbatch", "--parsable", "--array=0-4,7%2", "--dependency=afterany:9", "--comment=tok:traces",
                    "/e/x.sbatch"]


def test_the_tagged_jobs_query_and_a_comment_with_a_pipe():
    from hpc.backends.slurm.commands import squeue_tagged_argv, tagged

    assert squeue_tagged_argv() == ["squeue", "-h", "--me", "-o", "%i|%k"]  # this user's jobs: id|comment
    out = "16|hpc-launch:ab12:odd|key\n17_3|hpc-launch:ab12:a|b\n18|x|hpc-launch:ab12:y\n"
    assert tagged(out, "hpc-launch:ab12") == ["16", "17"]


def test_refusal_reason_without_a_known_cause_adds_no_hint():
    from hpc.backends.slurm.commands import refusal_reason

    assert refusal_reason("allocation failure: Something new\n", 1) == "Something new"
    assert refusal_reason("", 2) == "exit code 2"


def test_slurm_message_is_stderr_on_one_line_else_stdout_else_the_exit_code():
    from hpc.backends.slurm.commands import slurm_message

    assert slurm_message("ignored\n", "sbatch: error: Batch job submission failed: x\n\nsbatch: error: y\n"
                         "sbatch: error: y\n", 1) == "Batch job submission failed: x; y"
    assert slurm_message("Submitted nothing\n", "", 1) == "Submitted nothing"
    assert slurm_message("", "", 3) == "exit code 3"
