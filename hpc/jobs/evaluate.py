"""Eval: the cluster's own harness (profile `eval_command`) on the model the step before produced."""

from __future__ import annotations

from pathlib import Path

from hpc import ROOT
from hpc.context import Context, LaunchOptions, render_job, resolve_header
from hpc.errors import LaunchError
from hpc.jobs.chain import after
from hpc.plan import JobSpec, Step

RESULTS_REL = "eval/results.json"


def step(opts: LaunchOptions, ctx: Context, job_name: str, experiment_dir: Path, producer: Step) -> Step:
    """An eval job `afterok` on `producer`, reading the model it leaves. Never requeued."""
    template = ctx.profile.eval_command
    if not template:
        raise LaunchError(
            f"--eval_tasks: the {ctx.profile.name} profile has no eval_command; add your harness's command "
            "to it (see cluster_profiles/README.md)"
        )
    nodes = 1 if opts.eval_num_nodes is None else opts.eval_num_nodes
    header = resolve_header(ctx, f"{job_name}_eval", experiment_dir, partition=opts.partition,
                            account=opts.account, qos=opts.qos, time_limit=opts.eval_time_limit, nodes=nodes,
                            gpus_per_node=opts.gpus_per_node)
    results = experiment_dir / RESULTS_REL
    values = {"model": producer.model_dir, "tasks": opts.eval_tasks, "output": str(results), "hpc_root": str(ROOT),
              "nodes": str(nodes), "gpus_per_node": str(header.gpus_per_node)}
    command = [arg.format_map(values) for arg in template]
    script = render_job("command.sbatch.j2", ctx, header, experiment_dir, "eval", command=command,
                        make_dirs=[str(results.parent)])
    job = JobSpec(key="eval", job_type="eval", name=header.job_name, script=script, script_path="sbatch/eval.sbatch",
                  dependencies=after(producer))
    return Step(job=job)
