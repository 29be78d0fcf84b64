"""`python -m hpc.launch` / `hpc-launch`: plan a launch, write its experiment directory, submit it.

The CLI is a thin layer: hpc.jobs.<type>.build_plan returns the plan (pure), hpc.plan writes
the records, hpc.slurm submits. User mistakes print one line and exit 2; SLURM refusals exit 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from hpc.context import LaunchOptions
from hpc.datagen_config import options_from
from hpc.errors import run_reporting
from hpc.plan import LaunchPlan, write_experiment
from hpc.slurm import sbatch_argv

JOB_TYPES = ("train", "datagen", "consolidate")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not usage + message
        self.exit(2, f"hpc-launch: error: {message} (see --help)\n")


def _flag(group: argparse._ActionsContainer, name: str, **kwargs) -> None:
    """Every option works as --snake_case and --kebab-case."""
    names = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
    group.add_argument(*names, dest=name, **kwargs)


def parser() -> argparse.ArgumentParser:
    from hpc.jobs.train import TRAIN_FLAGS

    p = _Parser(prog="hpc-launch", description="Turn ML work into SLURM jobs on this cluster.")
    _flag(p, "job_type", choices=JOB_TYPES, default="train", help="what to launch (default: train)")
    g = p.add_argument_group("launch")
    _flag(g, "cluster", help="cluster profile name (default: detected from SLURM's ClusterName, then the hostname)")
    _flag(g, "job_name", help="SLURM job name and experiment directory name (default: <config>_<timestamp>)")
    _flag(g, "experiments_dir", help="where experiment directories go (default: $EXPERIMENTS_DIR from the dotenv, else ./experiments)")
    _flag(g, "dry_run", action="store_true", help="render and record everything, submit nothing")
    _flag(g, "wait", action="store_true", help="after submitting, wait for the jobs and report how they ended")
    _flag(g, "dependency", help="SLURM dependency for the first job, e.g. afterok:12345")
    _flag(g, "secrets_env", help="your private secrets file, sourced by jobs at run time (default: $DC_AGENT_SECRET_ENV)")
    _flag(g, "dotenv", help="dotenv starter pack to use instead of the profile's")
    _flag(g, "prefetch", action="store_true", help="download Hub models and datasets on this node first "
          "(always on clusters whose compute nodes have no internet)")
    _flag(g, "tunnel", action="store_true", help="SSH SOCKS tunnel from the job to the profile's tunnel_host; the "
          "job's command runs under proxychains4 (needs SSH_KEY, a key path, in your secrets file or dotenv)")
    r = p.add_argument_group("resources (default: the cluster profile)")
    _flag(r, "partition")
    _flag(r, "account")
    _flag(r, "qos")
    _flag(r, "time_limit", help="SLURM time, e.g. 04:00:00 or 1-00:00:00")
    _flag(r, "num_nodes", type=int, help="nodes (default: 1)")
    _flag(r, "gpus_per_node", type=int, help="GPUs per node (default: all of the node's)")
    t = p.add_argument_group("train (LLaMA-Factory): explicit flags > YAML > profile > defaults")
    _flag(t, "train_config_path", help="LLaMA-Factory YAML")
    _flag(t, "global_batch_size", type=int, help="sets gradient_accumulation_steps exactly, or errors")
    _flag(t, "max_restarts", type=int, help="requeues after a time limit or preemption, resuming from the "
          "newest checkpoint (default: 3; 0 never requeues)")
    for key, kind in TRAIN_FLAGS.items():
        _flag(t, key, type=kind, default=None)
    c = p.add_argument_group("consolidate: ZeRO shards -> safetensors (--job_type consolidate, or --consolidate after train)")
    _flag(c, "consolidate", action="store_true", help="chain a consolidate job after train (afterok)")
    _flag(c, "consolidate_input", help="ZeRO checkpoint dir, training output dir, or Hub repo id (org/name[@rev])")
    _flag(c, "consolidate_output_dir", help="where the safetensors go (default: next to the checkpoints)")
    _flag(c, "consolidate_output_repo", help="also upload to this Hub repo (private unless --public); adds a commit")
    _flag(c, "consolidate_time_limit")
    _flag(c, "consolidate_partition")
    _flag(c, "dtype", choices=("fp32", "bf16"), default="fp32", help="weights dtype (default: fp32)")
    _flag(c, "public", action="store_true", help="create the upload repo public")
    _flag(c, "overwrite", action="store_true", help="write into a non-empty output dir (only its own files)")
    d = p.add_argument_group("datagen: task generation, then traces in chunks as one throttled job array")
    _flag(d, "datagen_config", help="YAML with engine (openai, anthropic, vllm_local, none), model, server, chunking")
    _flag(d, "datagen_script", help="your generator, called with --stage tasks (see README: generator interface)")
    _flag(d, "datagen_target_repo", help="dataset repo for the generated tasks")
    _flag(d, "datagen_extra_args", help="extra arguments for the generator, one shell-quoted string")
    _flag(d, "datagen_output_dir", help="where tasks are written (default: <experiment>/outputs/tasks)")
    _flag(d, "enable_task_gen", action=argparse.BooleanOptionalAction, default=None, help="generate tasks (default: yes)")
    _flag(d, "enable_trace_gen", action=argparse.BooleanOptionalAction, default=None, help="generate traces (default: no)")
    _flag(d, "trace_script", help="generator for --stage traces (default: --datagen_script)")
    _flag(d, "trace_target_repo", help="dataset repo for traces; chunk i goes to <repo>-chunk00i")
    _flag(d, "trace_input_path", help="existing tasks (instead of generating them)")
    _flag(d, "trace_output_dir", help="where traces are written (default: <experiment>/outputs/traces)")
    for name in ("trace_harbor_config", "trace_model", "trace_agent_name", "trace_env"):
        _flag(d, name)
    _flag(d, "trace_agent_kwargs", help="JSON object passed to the agent")
    _flag(d, "trace_n_concurrent", type=int)
    _flag(d, "chunk_size", type=int, help="tasks per chunk when the tasks exist at launch")
    _flag(d, "chunk_parallelism", type=int, help="chunks running at once (the array's %%N)")
    _flag(d, "num_chunks", type=int, help="array size when tasks are generated in the same launch")
    _flag(d, "server_wait_timeout", type=int, help="seconds jobs wait for the inference server (default 1800)")
    _flag(d, "only_failed_chunks", metavar="EXPERIMENT_DIR", help="resubmit only the unfinished chunks of that launch")
    e = p.add_argument_group("eval: the profile's eval_command on the model, after the last step (afterok)")
    _flag(e, "eval_tasks", help="tasks for the cluster's eval harness (local: a held-out data JSON)")
    _flag(e, "eval_time_limit")
    _flag(e, "eval_num_nodes", type=int)
    return p


def options_from_args(args: argparse.Namespace) -> LaunchOptions:
    from hpc.jobs.train import TRAIN_FLAGS

    values = vars(args)
    common = {k: values[k] for k in LaunchOptions.__dataclass_fields__ if k in values}
    overrides = {k: values[k] for k in TRAIN_FLAGS if values.get(k) is not None}
    return LaunchOptions(**common, train_overrides=overrides, datagen=options_from(values))


def build_plan(opts: LaunchOptions) -> LaunchPlan:
    from hpc.jobs import consolidate, datagen, train

    if opts.job_type == "datagen":
        from hpc.slurm import max_array_size

        return datagen.build_plan(opts, max_array_size=max_array_size(dry_run=opts.dry_run))
    builders = {"train": train.build_plan, "consolidate": consolidate.build_plan}
    return builders[opts.job_type](opts)


def _print_plan(plan: LaunchPlan) -> None:
    placeholders = {job.key: f"<{job.key}>" for job in plan.jobs}
    for job in plan.jobs:
        argv = sbatch_argv(plan.experiment_dir / job.script_path, job.dependencies, placeholders, job.array)
        print(f"\n--- {job.key}: {' '.join(argv)}\n{job.script}", end="")


def run(opts: LaunchOptions, wait: bool = False) -> int:
    from hpc import slurm

    plan = build_plan(opts)
    manifest = write_experiment(plan, dry_run=opts.dry_run)
    print(f"hpc-launch: cluster {plan.cluster}, experiment directory {plan.experiment_dir}")
    for note in plan.notes:
        print(f"hpc-launch: note: {note}")
    if opts.dry_run:
        _print_plan(plan)
        print(f"\nhpc-launch: dry run: nothing submitted; scripts and manifest are in {plan.experiment_dir}")
        return 0
    manifest = slurm.submit(plan, manifest)
    for record in manifest["jobs"]:
        print(f"  {record['key']}: SLURM job {record['slurm_job_id']} ({' '.join(record['sbatch_argv'])})")
    print(f"hpc-launch: logs in {plan.experiment_dir / 'logs'}")
    if not wait:
        return 0
    from hpc.status import wait_and_report

    return wait_and_report(plan.experiment_dir)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return run_reporting("hpc-launch", lambda: run(options_from_args(args), wait=args.wait))


if __name__ == "__main__":
    sys.exit(main())
