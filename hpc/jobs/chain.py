"""A launch as a small DAG: train -> consolidate -> eval, each step `afterok` on the one before."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from hpc import ROOT
from hpc.context import Context, LaunchOptions, render_job, resolve_header
from hpc.errors import LaunchError
from hpc.plan import Dependency, JobSpec, LaunchPlan, Step

DEFERRED_REL = "configs/deferred.json"
SYNC_REL = "sbatch/sync.py"
SYNC_SOURCE = ROOT / "hpc" / "jobside" / "sync.py"


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
    deferred: dict[str, list] = {}
    for step in steps:
        for kind, items in step.deferred.items():
            deferred.setdefault(kind, []).extend(items)
    if not deferred:
        return LaunchPlan.from_steps(experiment_dir, ctx.profile.name, steps)
    if ctx.profile.internet_partition:
        steps.append(_sync_step(opts, ctx, job_name, experiment_dir, steps[-1]))
        note = f"deferred uploads run in the sync job on partition {ctx.profile.internet_partition}"
    else:
        note = login_sync_note(ctx, experiment_dir)
    plan = LaunchPlan.from_steps(experiment_dir, ctx.profile.name, steps)
    return replace(plan, files={**plan.files, **deferred_files(deferred)}, notes=(*plan.notes, note))


def deferred_files(deferred: dict[str, list]) -> dict[str, str]:
    """What hpc.sync reads: the deferred work, and its program copied into the experiment."""
    return {DEFERRED_REL: json.dumps(deferred, indent=2) + "\n", SYNC_REL: SYNC_SOURCE.read_text()}


def login_sync_note(ctx: Context, experiment_dir: Path) -> str:
    return (f"compute nodes of {ctx.profile.name} have no internet: when the jobs have finished, run on the "
            f"login node: python -m hpc.sync {experiment_dir}")


def _sync_step(opts: LaunchOptions, ctx: Context, job_name: str, experiment_dir: Path, last: Step) -> Step:
    """The deferred uploads as a job on the profile's partition with internet, after the last step."""
    header = resolve_header(ctx, f"{job_name}_sync", experiment_dir, partition=ctx.profile.internet_partition,
                            account=opts.account, gpus_per_node=0, time_limit="01:00:00")
    script = render_job("command.sbatch.j2", ctx, header, experiment_dir, "sync", offline=False, make_dirs=[],
                        command=["python", str(experiment_dir / SYNC_REL), str(experiment_dir)])
    job = JobSpec(key="sync", job_type="sync", name=header.job_name, script=script, script_path="sbatch/sync.sbatch",
                  dependencies=after(last))
    return Step(job=job)
