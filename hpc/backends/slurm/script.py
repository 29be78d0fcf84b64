"""A job as an sbatch script: the #SBATCH header and the Jinja2 templates (StrictUndefined, values quoted).

Templates are package data (templates/); a directory named by HPC_LAUNCH_TEMPLATES is searched first,
so a site can override one part without copying the rest. Compiled templates are kept in hpc-launch's cache
(hpc.cache), each valid only for the same template source and environment settings.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
from dataclasses import fields
from pathlib import Path
from typing import Any

import jinja2

from hpc import cache
from hpc.errors import LaunchError
from hpc.profiles import ClusterProfile
from hpc.records import record
from hpc.secret_rule import LOCATION_ERE, SECRET_NAME_ERE
from hpc.spec import PORT, Cancel, Command, Job, Plan, Server, Stage, Train

TEMPLATES_ENV = "HPC_LAUNCH_TEMPLATES"
#: Which template renders which kind of job body.
TEMPLATES = {Command: "command.sbatch.j2", Cancel: "cancel.sbatch.j2", Train: "train.sbatch.j2",
             Server: "server.sbatch.j2", Stage: "datagen.sbatch.j2"}

# What an #SBATCH value may hold: sbatch reads these lines itself (no shell), splitting at spaces and taking
# quotes and '#' specially; so none of those or newlines, but constraint syntax (gpu&hbm80g, [a|b]*2, !x) is fine.
_SBATCH_VALUE = re.compile(r"[A-Za-z0-9_.,:+=@%/~&|!*()\[\]-]+")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@record(eq=False)
class SbatchHeader:
    """The #SBATCH lines of one job (rendered by templates/base.sbatch.j2)."""

    job_name: str
    partition: str | None
    account: str | None
    qos: str | None
    nodes: int
    cpus_per_task: int
    gpus: str | None  # e.g. "--gres=gpu:4"; None for CPU jobs and where nodes come with all their GPUs
    mem: str | None
    time: str
    log_pattern: str
    workdir: str
    extra: tuple[str, ...] = ()
    requeue: bool = False
    signal: str | None = None  # e.g. "B:USR1@300": warn the batch shell before the time limit
    export_none: bool = True  # --export=NONE (srun then needs --export=ALL); else the script resets the environment


def quote(value: object) -> str:
    """Shell-quote one value for the body of a script."""
    return shlex.quote(str(value))


def sbatch_value(value: object) -> str:
    """A value for an #SBATCH line, refused when sbatch could misread it."""
    text = str(value)
    if not _SBATCH_VALUE.fullmatch(text):
        raise LaunchError(
            f"{text!r} cannot go on an #SBATCH line (spaces, quotes and shell characters are not allowed there); "
            "choose a value or path without them"
        )
    return text


def variable_name(value: object) -> str:
    """An environment variable's name for `export NAME=...`, refused unless it is an identifier."""
    text = str(value)
    if not _NAME.fullmatch(text):
        raise LaunchError(f"{text!r} is not an environment variable name (letters, digits and '_'); fix the dotenv "
                          "pack or profile that sets it")
    return text


def shell_words(argv: list[str]) -> str:
    """Quote argv for the script, turning the PORT placeholder into the job's own "$port"."""
    def word(arg: str) -> str:
        return '"$port"'.join(shlex.quote(part) if part else "" for part in arg.split(PORT)) or "''"

    return " ".join(word(arg) for arg in argv)


#: How templates are read; the compiled code depends on these, so cached code is only used with the same ones.
_SETTINGS = {"undefined": jinja2.StrictUndefined, "autoescape": False, "keep_trailing_newline": True,
             "trim_blocks": True, "lstrip_blocks": True}
_FILTERS = {"q": quote, "sbatch": sbatch_value, "name": variable_name}


class _CompiledTemplates(jinja2.FileSystemBytecodeCache):
    """Jinja's cache of compiled templates (one file per template, checked against its source), made to check the
    environment's settings too, and never to fail a launch."""

    def __init__(self, directory: Path) -> None:
        super().__init__(str(directory))
        self.settings = repr((sorted(_SETTINGS.items()), sorted(_FILTERS)))

    def get_source_checksum(self, source: str) -> str:
        return super().get_source_checksum(f"{self.settings}\n{source}")

    def dump_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        try:
            super().dump_bytecode(bucket)
        except OSError:  # not stored: the next launch compiles it again
            pass


@functools.cache
def environment(override: str | None) -> jinja2.Environment:
    loaders: list[jinja2.BaseLoader] = [jinja2.PackageLoader("hpc.backends.slurm", "templates")]
    if override:
        loaders.insert(0, jinja2.FileSystemLoader(override))
    folder = cache.directory("templates")
    env = jinja2.Environment(loader=jinja2.ChoiceLoader(loaders), **_SETTINGS,
                             bytecode_cache=_CompiledTemplates(folder) if folder else None)
    env.filters.update(_FILTERS)
    return env


def header(job: Job, profile: ClusterProfile, experiment_dir: Path) -> SbatchHeader:
    r, slurm = job.resources, profile.slurm
    log = "%x_%A_%a.out" if job.array else "%x_%j.out"
    return SbatchHeader(job_name=job.name, partition=r.partition, account=r.account, qos=r.qos, nodes=r.nodes,
                        cpus_per_task=r.cpus_per_node, gpus=_gpu_request(r.gpus_per_node, slurm.gpu_request),
                        mem=r.mem, time=r.time_limit, log_pattern=str(experiment_dir / "logs" / log),
                        workdir=str(job.prelude.workdir),
                        extra=(*slurm.gpu_constraints.get(r.gpu_type or "", ()), *slurm.sbatch_extra),
                        requeue=job.requeue,
                        signal=f"B:USR1@{job.body.signal_seconds}" if isinstance(job.body, Train) else None,
                        export_none=slurm.export_none)


def _gpu_request(gpus: int, how: str) -> str | None:
    """The option asking for `gpus` GPUs per node the way the profile says (none: the node brings them)."""
    if not gpus or how == "none":
        return None
    return f"--gres=gpu:{gpus}" if how == "gres" else f"--gpus-per-node={gpus}"


def _body_context(job: Job, plan: Plan) -> dict[str, Any]:
    body = job.body
    values = {f.name: getattr(body, f.name) for f in fields(body)}
    if isinstance(body, Server):
        values["command_words"] = shell_words(values.pop("command"))
    return values


def render(job: Job, plan: Plan) -> str:
    """One job's sbatch script."""
    p = job.prelude
    template = environment(os.environ.get(TEMPLATES_ENV)).get_template(TEMPLATES[type(job.body)])
    return template.render(job_type=job.job_type, header=header(job, plan.profile, plan.experiment_dir),
                           profile=plan.profile, env=p.env, secrets_path=p.secrets_path,
                           experiment_dir=plan.experiment_dir, offline=p.offline, tunnel=p.tunnel,
                           secret_name_ere=SECRET_NAME_ERE, location_ere=LOCATION_ERE, **_body_context(job, plan))
