"""A launch as a small DAG: train -> consolidate -> eval, each step `afterok` on the one before."""

from __future__ import annotations

from pathlib import Path

from hpc.context import Context, LaunchOptions
from hpc.errors import LaunchError
from hpc.plan import Dependency, LaunchPlan, Step


def after(step: Step) -> tuple[Dependency, ...]:
    """Run only when `step` COMPLETED (requeues of it keep this job waiting)."""
    return (Dependency(kind="afterok", job=step.job.key),)


def finish_chain(opts: LaunchOptions, ctx: Context, job_name: str, experiment_dir: Path, steps: list[Step],
                 consolidate_after: bool) -> LaunchPlan:
    """Append the optional consolidate (after a train step) and eval steps, and make the plan."""
    from hpc.jobs import consolidate, evaluate

    if consolidate_after:
        steps.append(consolidate.after_train(opts, ctx, job_name, experiment_dir, steps[-1]))
    elif any([opts.consolidate_output_repo, opts.consolidate_output_dir, opts.dtype != "fp32"]) and \
            opts.job_type == "train":
        raise LaunchError("consolidate options were given without --consolidate; add --consolidate to chain it")
    if opts.eval_tasks:
        producer = steps[-1]
        if producer.model_dir is None:
            raise LaunchError(f"--eval_tasks needs a model to evaluate, but the {producer.job.key} job produces none")
        steps.append(evaluate.step(opts, ctx, job_name, experiment_dir, producer))
    return LaunchPlan.from_steps(experiment_dir, ctx.profile.name, steps)
