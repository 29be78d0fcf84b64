"""Eval: the cluster's own harness (profile `eval_command`) on the model the step before produced."""

from __future__ import annotations

from hpc import ROOT
from hpc.context import Launch
from hpc.errors import LaunchError
from hpc.pipeline import after
from hpc.spec import Command, Step

RESULTS_REL = "eval/results.json"


def append_if_asked(launch: Launch, steps: list[Step]) -> None:
    """With --eval_tasks, an eval job after the last step, on the model it leaves."""
    if not launch.opts.eval_tasks:
        return
    producer = steps[-1]
    if producer.model_dir is None:
        raise LaunchError(f"--eval_tasks needs a model to evaluate, but the {producer.job.key} job produces none")
    steps.append(step(launch, producer))


def step(launch: Launch, producer: Step) -> Step:
    """An eval job `afterok` on `producer`, reading the model it leaves. Never requeued."""
    opts, profile = launch.opts, launch.profile
    template = profile.eval_command
    if not template:
        raise LaunchError(
            f"--eval_tasks: the {profile.name} profile has no eval_command; add your harness's command "
            "to it (see cluster_profiles/README.md)"
        )
    nodes = 1 if opts.eval_num_nodes is None else opts.eval_num_nodes
    resources = launch.resources(partition=opts.partition, account=opts.account, qos=opts.qos,
                                 time_limit=opts.eval_time_limit, nodes=nodes, gpus_per_node=opts.gpus_per_node)
    results = launch.experiment_dir / RESULTS_REL
    values = {"model": producer.model_dir, "tasks": opts.eval_tasks, "output": str(results), "hpc_root": str(ROOT),
              "nodes": str(nodes), "gpus_per_node": str(resources.gpus_per_node)}
    body = Command(command=[arg.format_map(values) for arg in template], make_dirs=[str(results.parent)])
    return Step(job=launch.job("eval", body, resources, dependencies=after(producer)))
