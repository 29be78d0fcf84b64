"""A launch as neutral data: jobs with resources, an environment prelude, a typed body and dependencies.

Job types (hpc/jobs/) build these; a backend (hpc/backends/) turns them into its own scripts and
submissions. Nothing here knows how a scheduler spells anything.
"""

from __future__ import annotations

import re
from dataclasses import field
from pathlib import Path

from hpc.errors import LaunchError
from hpc.profiles import ClusterProfile
from hpc.records import record

#: The experiment's folder for job scripts and the job-side programs they run (its name predates backends).
PROGRAMS = "sbatch"

MAX_JOB_NAME = 96
_JOB_NAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{MAX_JOB_NAME - 1}}}")
#: The longest suffix a launch adds to its name for one of its jobs (<name>_consolidate).
LONGEST_SUFFIX = len("_consolidate")
_EXTERNAL_DEP = re.compile(r"(after|afterok|afterany|afternotok|aftercorr|afterburstbuffer)(:\d+(_\d+)?)+")


def check_job_name(name: str) -> str:
    if not _JOB_NAME.fullmatch(name):
        raise LaunchError(
            f"job name {name!r} is not usable; use up to 96 letters, digits, '.', '_' or '-', starting with a letter "
            "or digit (pass --job_name NAME)"
        )
    return name


def default_job_name(stem: str, kind: str = "", fallback: str = "job") -> str:
    """<stem>[_<kind>]_<timestamp>, from an input's name (config file, model, ...): the stem in job-name characters,
    cut so that every job of the launch (<name>_<key>) stays within MAX_JOB_NAME characters."""
    from datetime import datetime

    tail = f"{'_' if kind else ''}{kind}_{datetime.now():%Y%m%d-%H%M%S}"
    clean = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).lstrip("-._")
    return f"{clean[:MAX_JOB_NAME - LONGEST_SUFFIX - len(tail)].rstrip('-.') or fallback}{tail}"


@record(eq=False)
class Dependency:
    """`kind` (after, afterok, afterany, ...) on another job of this launch (`job`) or an existing one (`external`)."""

    kind: str
    job: str | None = None
    external: str | None = None


def parse_dependency(text: str) -> list[Dependency]:
    """User --dependency: "afterok:123:456,afterany:789" or bare job ids ("123")."""
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
        deps.extend(Dependency(kind=kind, external=i) for i in ids)
    return deps


@record(eq=False)
class Resources:
    """What one job asks for, already checked against the cluster profile."""

    nodes: int
    gpus_per_node: int
    cpus_per_node: int
    mem: str | None  # per node, e.g. "131072M"; None leaves it to the site
    time_limit: str  # HH:MM:SS or D-HH:MM:SS
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    gpu_type: str | None = None  # a name from the profile's gpu_types; the backend turns it into node constraints


@record(eq=False)
class Tunnel:
    """An SSH SOCKS tunnel from the job's first node to a host with internet, used through proxychains4."""

    host: str
    direct: list[tuple[str, str]]  # (network, netmask) pairs reached directly


@record(eq=False)
class Prelude:
    """The job's environment before its body runs."""

    env: dict[str, str]  # exported (never a secret: those are sourced from secrets_path at run time)
    secrets_path: Path | None
    offline: bool  # set the libraries' offline switches (compute nodes without internet)
    tunnel: Tunnel | None
    workdir: Path


@record(eq=False)
class Command:
    """Run one command (consolidate, eval, sync, cleanup)."""

    command: list[str]
    make_dirs: list[str] = field(default_factory=list)


@record(eq=False)
class Train:
    """torchrun of `entrypoint CONFIG` on every node, resuming from the newest checkpoint after a restart."""

    nproc_per_node: int
    entrypoint: list[str]
    config_path: Path
    output_dir: str
    max_restarts: int
    signal_seconds: int
    summary_script: str


@record(eq=False)
class Server:
    """An inference server: started, health-checked, then its endpoint JSON (model_name, endpoint_url)
    published to endpoint_file."""

    command: list[str]  # PORT marks where the job's port goes
    port_base: int
    health_timeout: int
    endpoint_file: str
    model_name: str
    helper: str


@record(eq=False)
class Stage:
    """A generator stage: tasks once, or traces per array task (a chunk of the task list, as a directory of
    symlinks). `command` is the generator's argv up to the per-job arguments; `extra` goes last."""

    stage: str
    command: list[str]
    extra: list[str]
    output_dir: str
    target_repo: str | None
    helper: str
    server_name: str | None  # set when the stage uses the launch's server (it waits for its endpoint)
    endpoint_file: str
    wait_timeout: int
    engine_config: str
    tasks_dir: str | None = None
    num_chunks: int = 0
    chunk_offset: int = 0
    jobs_dir: str | None = None


@record(eq=False)
class Cancel:
    """Cancel other jobs of the launch (by key), e.g. an inference server once the work is done."""

    keys: list[str]


#: Where the server's port goes in Server.command.
PORT = "\0PORT\0"

Body = Command | Train | Server | Stage | Cancel


@record(eq=False)
class Array:
    """Tasks of a job array: indices, at most `parallel` running at once."""

    indices: tuple[int, ...]
    parallel: int
    first: int = 0  # the unit (e.g. datagen chunk) that task 0 works on

    @property
    def size(self) -> int:
        return len(self.indices)


@record(eq=False)
class Job:
    """One job of a launch."""

    key: str  # unique within the launch, e.g. "train"
    job_type: str
    name: str
    resources: Resources
    prelude: Prelude
    body: Body
    dependencies: tuple[Dependency, ...] = ()
    array: Array | None = None
    requeue: bool = False  # restartable after a time limit or preemption (Train counts the restarts)


@record(eq=False)
class Step:
    """One job, the files it needs and where it leaves a model (for the next step to find)."""

    job: Job
    files: dict[str, str] = field(default_factory=dict)
    model_dir: str | None = None
    links: dict[str, str] = field(default_factory=dict)  # relative path -> symlink target
    notes: tuple[str, ...] = ()  # what the user should know (printed at launch)
    deferred: dict[str, list] = field(default_factory=dict)  # uploads that need the internet later


@record(eq=False)
class Plan:
    """Everything a launch writes and submits, computed before anything is written."""

    experiment_dir: Path
    profile: ClusterProfile
    jobs: tuple[Job, ...]
    files: dict[str, str] = field(default_factory=dict)  # relative path -> text
    links: dict[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    @property
    def cluster(self) -> str:
        return self.profile.name

    def job(self, key: str) -> Job:
        return next(j for j in self.jobs if j.key == key)

    @classmethod
    def from_steps(cls, experiment_dir: Path, profile: ClusterProfile, steps: list[Step]) -> "Plan":
        return cls(experiment_dir=experiment_dir, profile=profile, jobs=tuple(s.job for s in steps),
                   files={rel: text for step in steps for rel, text in step.files.items()},
                   links={rel: target for step in steps for rel, target in step.links.items()},
                   notes=tuple(note for step in steps for note in step.notes))
