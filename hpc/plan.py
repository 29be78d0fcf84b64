"""A launch as data: the jobs to submit, their scripts and dependencies, and the experiment directory.

`build_plan` functions (hpc/jobs/) are pure: they read inputs and return a LaunchPlan. Writing the
experiment directory and submitting (hpc/slurm.py) are separate, small side effects.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from hpc.errors import LaunchError

MANIFEST = "manifest.json"
_JOB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
_EXTERNAL_DEP = re.compile(r"(after|afterok|afterany|afternotok|aftercorr|afterburstbuffer)(:\d+(_\d+)?)+")


def check_job_name(name: str) -> str:
    if not _JOB_NAME.fullmatch(name):
        raise LaunchError(
            f"job name {name!r} is not usable; use up to 96 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


@dataclass(frozen=True)
class Dependency:
    """`kind` on another job of this launch (`job`) or on an existing SLURM job (`slurm_job_id`)."""

    kind: str
    job: str | None = None
    slurm_job_id: str | None = None


def parse_dependency(text: str) -> list[Dependency]:
    """User --dependency: SLURM syntax ("afterok:123:456,afterany:789") or bare job ids ("123")."""
    if "?" in text:
        raise LaunchError("--dependency with '?' (any of) is not supported; list the jobs with ',' (all of)")
    deps: list[Dependency] = []
    for part in text.split(","):
        part = part.strip()
        if re.fullmatch(r"\d+(_\d+)?", part):
            part = f"afterok:{part}"
        if not _EXTERNAL_DEP.fullmatch(part):
            raise LaunchError(
                f"--dependency {text!r} is not understood; use SLURM syntax such as afterok:12345 or afterany:12345:12346"
            )
        kind, *ids = part.split(":")
        deps.extend(Dependency(kind=kind, slurm_job_id=i) for i in ids)
    return deps


@dataclass(frozen=True)
class JobSpec:
    """One sbatch submission of a launch."""

    key: str  # unique within the launch, e.g. "train"
    job_type: str
    name: str  # SLURM job name
    script: str  # rendered text
    script_path: str  # relative to the experiment directory
    dependencies: tuple[Dependency, ...] = ()
    array: str | None = None  # SLURM --array spec, e.g. "0-4%2"


@dataclass(frozen=True)
class Step:
    """One job of a launch, the files it needs and where it leaves a model (for eval to find)."""

    job: JobSpec
    files: dict[str, str] = field(default_factory=dict)
    model_dir: str | None = None
    links: dict[str, str] = field(default_factory=dict)  # relative path -> symlink target
    notes: tuple[str, ...] = ()  # what the user should know (printed at launch)
    deferred: dict[str, list] = field(default_factory=dict)  # uploads that need the internet later


@dataclass(frozen=True)
class LaunchPlan:
    """Everything a launch writes and submits, computed before anything is written."""

    experiment_dir: Path
    cluster: str
    jobs: tuple[JobSpec, ...]
    files: dict[str, str] = field(default_factory=dict)  # relative path -> text (resolved configs)
    links: dict[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def job(self, key: str) -> JobSpec:
        return next(j for j in self.jobs if j.key == key)

    @classmethod
    def from_steps(cls, experiment_dir: Path, cluster: str, steps: list[Step]) -> "LaunchPlan":
        files = {rel: text for step in steps for rel, text in step.files.items()}
        links = {rel: target for step in steps for rel, target in step.links.items()}
        notes = tuple(note for step in steps for note in step.notes)
        return cls(experiment_dir=experiment_dir, cluster=cluster, jobs=tuple(s.job for s in steps), files=files,
                   links=links, notes=notes)


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def manifest_record(plan: LaunchPlan, dry_run: bool) -> dict:
    return {
        "experiment": plan.experiment_dir.name,
        "experiment_dir": str(plan.experiment_dir),
        "cluster": plan.cluster,
        "dry_run": dry_run,
        "created_at": utc_now(),
        "jobs": [
            {
                "key": job.key,
                "name": job.name,
                "job_type": job.job_type,
                "script": str(plan.experiment_dir / job.script_path),
                "dependencies": [{k: v for k, v in asdict(d).items() if v is not None} for d in job.dependencies],
                "array": job.array,
                "slurm_job_id": None,
                "submitted_at": None,
                "sbatch_argv": None,
                "state": "planned",
            }
            for job in plan.jobs
        ],
    }


def write_json(path: Path, data: dict) -> None:
    """Replace a JSON file atomically, so a reader never sees half of it."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def read_manifest(experiment_dir: Path) -> dict:
    try:
        return json.loads((experiment_dir / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise LaunchError(f"{experiment_dir} has no readable {MANIFEST} ({exc}); is it an experiment directory?") from None


def write_experiment(plan: LaunchPlan, dry_run: bool) -> dict:
    """Write the experiment directory in one step: built aside, then renamed into place.

    A directory left by an earlier dry run is replaced; one whose jobs were submitted is refused.
    """
    target = plan.experiment_dir
    if target.exists():
        old = read_manifest(target) if (target / MANIFEST).exists() else None
        if old is None or any(j.get("slurm_job_id") for j in old["jobs"]):
            raise LaunchError(f"experiment directory {target} already exists; choose another --job_name")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        staging.chmod(0o777 & ~umask)  # mkdtemp makes it private; the result is an ordinary directory
        for rel, text in {**plan.files, **{j.script_path: j.script for j in plan.jobs}}.items():
            path = staging / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        for rel, link_target in plan.links.items():
            path = staging / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.symlink_to(link_target)
        (staging / "logs").mkdir()
        manifest = manifest_record(plan, dry_run)
        write_json(staging / MANIFEST, manifest)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest
