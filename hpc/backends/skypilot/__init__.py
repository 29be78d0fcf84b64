"""The SkyPilot backend: each job becomes a SkyPilot task (sky/<job>.yaml in the experiment), run one after another on
one cluster: launched (or exec'd when --cluster-name is up), followed to the end with its log streamed, its outputs
synced back and, with --down, the cluster torn down however the launch ends. SkyPilot itself is imported only on
first use: by lifecycle.py, and by the providers and ssh-pool verbs (providers.py, pools.py).

Job ids are `<cluster>/<SkyPilot job id>`; a job of a cluster that is gone keeps the state recorded at launch.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import yaml

from hpc.backends import JobStatus, Limits, Materialized
from hpc.backends.skypilot.task import TASKS, Cloud, task_config
from hpc.errors import LaunchError
from hpc.manifest import JobRecord, Manifest, State
from hpc.options import LaunchOptions
from hpc.readers import read_yaml
from hpc.spec import Job, Plan

#: The profile of launches without --cluster (hpc/backends/skypilot/profiles/cloud.yaml).
PROFILES = Path(__file__).parent / "profiles"


def prepare_launch(opts: LaunchOptions, environ: Mapping[str, str]) -> tuple[LaunchOptions, dict[str, str]]:
    """A SkyPilot launch's options and environment: the `cloud` profile unless --cluster names one, and --task
    implies --job_type run."""
    if opts.task and opts.job_type not in ("train", "run"):
        raise LaunchError(f"--task launches a SkyPilot task YAML as it is; drop --job_type {opts.job_type}")
    extra = os.pathsep.join(p for p in (environ.get("HPC_LAUNCH_PROFILES", ""), str(PROFILES)) if p)
    return (replace(opts, cluster=opts.cluster or "cloud", job_type="run" if opts.task else opts.job_type),
            {**environ, "HPC_LAUNCH_PROFILES": extra})


class _Dumper(yaml.SafeDumper):
    """Task YAML as people write it: keys in order, multi-line scripts as blocks."""


_Dumper.add_representer(str, lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s, style="|" if "\n" in s
                                                             else None))


def dump(config: dict) -> str:
    return yaml.dump(config, Dumper=_Dumper, sort_keys=False)


def _split(job_id: str) -> tuple[str, int]:
    cluster, _, number = job_id.rpartition("/")
    return cluster, int(number)


def read_secrets(path: Path | None) -> dict[str, str]:
    """KEY=VALUE lines of the secrets file (python-dotenv), for SkyPilot's secrets; never written anywhere."""
    if path is None:
        return {}
    from dotenv import dotenv_values

    return {k: v for k, v in dotenv_values(path, interpolate=False).items() if v is not None}


class Backend:
    name = "skypilot"

    def __init__(self, opts: LaunchOptions | None = None) -> None:
        self.opts = opts

    @classmethod
    def for_launch(cls, opts: LaunchOptions) -> "Backend":
        return cls(opts)

    def cloud(self, plan: Plan) -> Cloud:
        if self.opts is None:
            raise LaunchError("the SkyPilot backend launches only from hpc-launch's options")
        return Cloud.from_options(self.opts, plan.experiment_dir)

    def limits(self, dry_run: bool) -> Limits:
        return Limits()

    def materialize(self, plan: Plan) -> Materialized:
        cloud = self.cloud(plan)
        files, scripts, commands = {}, {}, {}
        for index, job in enumerate(plan.jobs):
            rel = f"{TASKS}/{job.key}.yaml"
            files[rel] = dump(self._config(job, plan, cloud))
            scripts[job.key] = rel
            verb = ["launch", "-c", cloud.cluster, *(["--down"] if cloud.down else [])] if index == 0 else \
                ["exec", cloud.cluster]
            commands[job.key] = ["sky", *verb, str(plan.experiment_dir / rel)]
        return Materialized(files=files, scripts=scripts, commands=commands, arrays={})

    def _config(self, job: Job, plan: Plan, cloud: Cloud) -> dict:
        if cloud.task_file is None:
            return task_config(job, plan, cloud)
        if cloud.providers or cloud.accelerators or cloud.docker_image or cloud.use_spot:
            raise LaunchError("--task launches the YAML as it is: put infra, accelerators and images in it")
        return read_yaml(cloud.task_file, "SkyPilot task", "check --task",
                         shape="a mapping of SkyPilot task keys (name, resources, run, ...)")

    def validate(self, plan: Plan, materialized: Materialized, asked: bool | None, dry_run: bool) -> None:
        """SkyPilot's own parser on every task, offline; with --validate also the optimizer's choice (a dry-run
        launch on the API server, which is started if need be). --no-validate skips both."""
        if asked is False:
            return
        from hpc.backends.skypilot import lifecycle

        for key, rel in materialized.scripts.items():
            config = yaml.safe_load(materialized.files[rel])
            lifecycle.check_offline(key, config)
            print(f"hpc-launch: SkyPilot accepts the {key} task (checked offline)")
            if asked:
                print(f"hpc-launch: SkyPilot's choice for {key}:\n{lifecycle.optimizer_choice(config)}")

    def submit(self, plan: Plan, materialized: Materialized, manifest: Manifest) -> None:
        from hpc.backends.skypilot.runner import run_jobs

        run_jobs(plan, materialized, manifest, self.cloud(plan), read_secrets(plan.jobs[0].prelude.secrets_path),
                 self.log_path)

    def resubmit(self, experiment_dir: Path, manifest: Manifest, keys: Sequence[str],
                 tasks: dict[str, list[int]]) -> None:
        raise LaunchError(f"retry is for SLURM experiments; launch again with the same options (--cluster-name "
                          f"reuses the cluster): {experiment_dir}")

    def query(self, jobs: Sequence[JobRecord]) -> dict[str, JobStatus]:
        """One job-status request per cluster; jobs of a cluster that is gone keep their recorded state."""
        from hpc.backends.skypilot import lifecycle

        by_cluster: dict[str, list[JobRecord]] = {}
        for job in jobs:
            if job.job_id:
                by_cluster.setdefault(_split(job.job_id)[0], []).append(job)
        found: dict[str, JobStatus] = {}
        for cluster, records in by_cluster.items():
            words = lifecycle.job_states(cluster, [_split(r.job_id or "")[1] for r in records])
            for record in records:
                word = (words or {}).get(_split(record.job_id or "")[1])
                if word is None:
                    found[record.job_id or ""] = JobStatus(record.job_id or "", record.state,
                                                           record.backend_state or "", record.exit_code or "")
                    continue
                state = lifecycle.STATES.get(word, State.UNKNOWN)
                log = self.log_path(Path(record.script).parent.parent, record)  # scripts are <experiment>/sky/*
                code = record.exit_code or (lifecycle.real_exit_code(log, word) if state.done else "")
                found[record.job_id or ""] = JobStatus(record.job_id or "", state, word, code)
        return found

    def cancel(self, jobs: Sequence[JobRecord]) -> list[str]:
        from hpc.backends.skypilot import lifecycle

        by_cluster: dict[str, list[int]] = {}
        for job in jobs:
            if job.job_id:
                cluster, number = _split(job.job_id)
                by_cluster.setdefault(cluster, []).append(number)
        for cluster, numbers in by_cluster.items():
            lifecycle.cancel(cluster, numbers)
        deadline = time.monotonic() + 30
        while True:
            states = self.query(jobs)
            alive = [j.job_id for j in jobs if j.job_id and not states[j.job_id].state.done]
            if not alive or time.monotonic() > deadline:
                return alive  # type: ignore[return-value]
            time.sleep(1)

    def array_tasks(self, spec: str) -> list[int]:
        raise LaunchError("arrays run on SLURM only")

    def log_path(self, experiment_dir: Path, job: JobRecord, task: int | None = None) -> Path:
        """logs/<name>_<cluster>_<id>.out, written while the launch follows the job."""
        return Path(experiment_dir) / "logs" / f"{job.name}_{(job.job_id or 'none').replace('/', '_')}.out"
