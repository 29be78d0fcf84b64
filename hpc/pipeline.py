"""The ending every launch shares: deferred uploads (a sync job on a partition with internet, or the
`python -m hpc.sync` note), the launch record hpc.sync reads, and the Plan."""

from __future__ import annotations

import json
from dataclasses import replace


from hpc import ROOT, yamlio
from hpc.context import Launch
from hpc.spec import PROGRAMS, Command, Dependency, Plan, Step

DEFERRED_REL = "configs/deferred.json"
LAUNCH_REL = "configs/launch.yaml"
SYNC_REL = f"{PROGRAMS}/sync.py"
SYNC_SOURCE = ROOT / "hpc" / "jobside" / "sync.py"


def after(step: Step) -> tuple[Dependency, ...]:
    """Run only when `step` COMPLETED (requeues of it keep this job waiting)."""
    return (Dependency(kind="afterok", job=step.job.key),)


def launch_record(launch: Launch, head: dict[str, object] = {}, tail: dict[str, object] = {}) -> str:
    """configs/launch.yaml: cluster, profile, workdir, exported environment and the secrets file's path."""
    ctx = launch.ctx
    record = {"cluster": ctx.profile.name, "profile_file": str(ctx.profile.source), **head, "workdir": str(ctx.workdir),
              **tail, "environment": ctx.env, "secrets_file": str(ctx.secrets_path) if ctx.secrets_path else None}
    return yamlio.dump(record)


def finish(launch: Launch, steps: list[Step], sync_after: tuple[Dependency, ...] | None = None) -> Plan:
    """The plan of `steps`, with the deferred uploads they recorded made runnable.

    With an `internet_partition` in the profile, a sync job runs them after `sync_after` (default: afterok
    on the last step); otherwise the user is told to run `python -m hpc.sync` on the login node.
    """
    deferred: dict[str, list] = {}
    for step in steps:
        for kind, items in step.deferred.items():
            deferred.setdefault(kind, []).extend(items)
    notes: tuple[str, ...] = ()
    files = {} if any(LAUNCH_REL in s.files for s in steps) else {LAUNCH_REL: launch_record(launch)}
    if deferred:
        partition = launch.profile.internet_partition
        if partition:
            steps = [*steps, _sync_step(launch, sync_after or after(steps[-1]))]
            notes = (f"deferred uploads run in the sync job on partition {partition}",)
        else:
            notes = (f"compute nodes of {launch.profile.name} have no internet: when the jobs have finished, run on "
                     f"the login node: python -m hpc.sync {launch.experiment_dir}",)
        files.update({DEFERRED_REL: json.dumps(deferred, indent=2) + "\n", SYNC_REL: SYNC_SOURCE.read_text()})
    if launch.profile.account_required and any(not s.job.resources.account for s in steps):  # only in a dry run
        notes = (*notes, f"{launch.profile.name} runs no job without an account: the real launch needs --account "
                         "PROJECT")
    plan = Plan.from_steps(launch.experiment_dir, launch.profile, steps)
    return replace(plan, files={**plan.files, **files}, notes=(*plan.notes, *notes))


def _sync_step(launch: Launch, deps: tuple[Dependency, ...]) -> Step:
    """The deferred uploads as a job on the profile's partition with internet."""
    resources = launch.resources(partition=launch.profile.internet_partition, account=launch.opts.account,
                                 gpus_per_node=0, time_limit="01:00:00")
    exp = launch.experiment_dir
    body = Command(command=["python", str(exp / SYNC_REL), str(exp)])
    return Step(job=launch.job("sync", body, resources, dependencies=deps, offline=False))
