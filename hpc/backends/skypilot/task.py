"""A job as a SkyPilot task, as plain data (no SkyPilot import): ordered resource fallbacks, envs, workdir, run.

`Cloud` is the launch's cloud options, checked once; `task_config` turns one neutral job (hpc.spec.Job) into the
dict SkyPilot reads from a task YAML. Secrets never enter it: they reach the task at launch (see lifecycle).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from hpc.errors import LaunchError
from hpc.options import LaunchOptions
from hpc.profiles import megabytes
from hpc.records import record
from hpc.spec import Command, Job, Plan, Train

#: The experiment's folder of task YAMLs.
TASKS = "sky"
#: --docker-image auto: upstream's images by GPUs per node (at most 1, 4, 8).
DOCKER_IMAGES = {1: "ghcr.io/open-thoughts/openthoughts-agent:gpu-1x",
                 4: "ghcr.io/open-thoughts/openthoughts-agent:gpu-4x",
                 8: "ghcr.io/open-thoughts/openthoughts-agent:gpu-8x"}
#: Infras where a cluster cannot be stopped, only torn down (autostop there means autodown).
NO_STOP = ("slurm", "ssh", "kubernetes", "k8s", "runpod", "vast", "lambda")
_CLUSTER = re.compile(r"[a-z]([-a-z0-9]{0,38}[a-z0-9])?")
_ACCELERATOR = re.compile(r"([A-Za-z0-9][A-Za-z0-9_.-]*)(?::(\d+))?")
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline"}


def _words(text: str | None, flag: str) -> tuple[str, ...]:
    words = tuple(w.strip() for w in (text or "").split(","))
    if text is not None and not all(words):
        raise LaunchError(f"{flag} {text!r} has an empty entry; separate the fallbacks with single commas")
    return words if text else ()


def cluster_name(job_name: str) -> str:
    """A SkyPilot cluster name from the job name: lower case, letters, digits and '-', at most 40 characters."""
    return re.sub(r"[^a-z0-9-]+", "-", f"hpc-{job_name}".lower()).strip("-")[:40].rstrip("-")


@record(eq=True)
class Cloud:
    """The cloud options of one launch, checked."""

    providers: tuple[str, ...]
    accelerators: tuple[str, ...]
    region: str | None
    zone: str | None
    use_spot: bool
    docker_image: str | None
    sync: bool
    autostop: int
    down: bool
    cluster: str
    output_subdir: str
    local_sync_dir: Path
    task_name: str | None
    timeout_minutes: float | None
    task_file: Path | None

    @classmethod
    def from_options(cls, opts: LaunchOptions, experiment_dir: Path) -> "Cloud":
        cluster = opts.cluster_name or cluster_name(experiment_dir.name)
        if not _CLUSTER.fullmatch(cluster):
            raise LaunchError(f"--cluster-name {cluster!r} is not a SkyPilot cluster name; use up to 40 lower-case "
                              "letters, digits and '-', starting with a letter")
        if opts.autostop < -1:
            raise LaunchError(f"--autostop {opts.autostop}: give idle minutes, or -1 for never")
        if opts.timeout_minutes is not None and opts.timeout_minutes <= 0:
            raise LaunchError(f"--timeout_minutes {opts.timeout_minutes}: give a positive number of minutes")
        subdir = opts.remote_output_subdir.strip("/")
        if not subdir or subdir.startswith("~") or ".." in Path(subdir).parts:
            raise LaunchError(f"--remote-output-subdir {opts.remote_output_subdir!r}: give a relative directory "
                              "under the synced working directory, e.g. outputs")
        providers = _words(opts.cloud_provider, "--cloud-provider")
        if (opts.region or opts.zone) and not providers:
            raise LaunchError("--region/--zone need --cloud-provider (regions are named per cloud)")
        if opts.zone and not opts.region:
            raise LaunchError("--zone needs --region")
        if (opts.region or opts.zone) and any("/" in p for p in providers):
            raise LaunchError("give the region either inside --cloud-provider (aws/us-east-1) or with --region")
        accelerators = _words(opts.accelerator, "--accelerator")
        bad = [a for a in accelerators if not _ACCELERATOR.fullmatch(a) or a.endswith(":0")]
        if bad:
            raise LaunchError(f"--accelerator {bad[0]!r} is not NAME or NAME:COUNT (e.g. H100:1)")
        local = Path(opts.local_sync_dir).expanduser().absolute() if opts.local_sync_dir else experiment_dir / "outputs"
        return cls(providers=providers, accelerators=accelerators, region=opts.region, zone=opts.zone,
                   use_spot=opts.use_spot, docker_image=opts.docker_image, sync=not opts.no_sync,
                   autostop=opts.autostop, down=opts.down, cluster=cluster, output_subdir=subdir,
                   local_sync_dir=local, task_name=opts.task_name, timeout_minutes=opts.timeout_minutes,
                   task_file=Path(opts.task).expanduser().absolute() if opts.task else None)

    def infras(self) -> list[str | None]:
        if not self.providers:
            return [None]
        return ["/".join(p for p in (provider, self.region, self.zone) if p) for provider in self.providers]


def _accelerator(text: str, gpus_per_node: int) -> tuple[str, int]:
    name, count = _ACCELERATOR.fullmatch(text).groups()  # type: ignore[union-attr]  # checked in Cloud
    return name, int(count) if count else max(1, gpus_per_node)


def image(cloud: Cloud, gpus: int) -> str | None:
    """The task's container image: --docker-image, or with 'auto' the smallest gpu-Nx image that fits."""
    if not cloud.docker_image:
        return None
    if cloud.docker_image != "auto":
        return cloud.docker_image.removeprefix("docker:")
    return next((DOCKER_IMAGES[n] for n in sorted(DOCKER_IMAGES) if gpus <= n), DOCKER_IMAGES[8])


def resources(job: Job, cloud: Cloud) -> dict:
    """SkyPilot resources: one entry, or the fallbacks in order (accelerators first, then infras): never a comma
    string, which SkyPilot rejects."""
    r = job.resources
    if r.gpus_per_node and not cloud.accelerators:
        raise LaunchError(f"the {job.key} job asks for {r.gpus_per_node} GPU(s) per node: name them with "
                          "--accelerator (e.g. H100:1,A100-80GB:1), or pass --gpus_per_node 0")
    entries = []
    for accelerator in cloud.accelerators or (None,):
        for infra in cloud.infras():
            entry: dict[str, object] = {}
            if infra:
                entry["infra"] = infra
            gpus = 0
            if accelerator:
                name, gpus = _accelerator(accelerator, r.gpus_per_node)
                entry["accelerators"] = f"{name}:{gpus}"
            else:
                entry["cpus"] = f"{r.cpus_per_node}+"
                if r.mem:
                    entry["memory"] = f"{_gigabytes(r.mem)}+"
            if cloud.use_spot:
                entry["use_spot"] = True
            if (chosen := image(cloud, gpus)) is not None:
                entry["image_id"] = f"docker:{chosen}"
            if cloud.autostop >= 0:
                stop_only = (infra or "").split("/")[0].lower() in NO_STOP
                entry["autostop"] = {"idle_minutes": cloud.autostop, "down": cloud.down or stop_only}
            entries.append(entry)
    return entries[0] if len(entries) == 1 else {"ordered": entries}


def _gigabytes(mem: str) -> int:
    return max(1, int(megabytes(mem) / 1024))


def run_script(job: Job, plan: Plan, cloud: Cloud) -> str:
    """What the task runs on every node: the job's environment, then its body; outputs go to $HPC_OUTPUT_DIR."""
    lines = ["set -eo pipefail", f'export HPC_OUTPUT_DIR="$HOME"/sky_workdir/{shlex.quote(cloud.output_subdir)}',
             'mkdir -p "$HPC_OUTPUT_DIR"']
    if plan.profile.env_activation:
        lines.append(plan.profile.env_activation)
    lines += [f"export {key}={value}" for key, value in OFFLINE.items() if job.prelude.offline]
    body = job.body
    if isinstance(body, Command):
        lines += [f"mkdir -p {shlex.quote(d)}" for d in body.make_dirs]
        lines.append(shlex.join(body.command))
    elif isinstance(body, Train):
        lines += [
            'export HPC_STOP_REQUEST="$HPC_EXPERIMENT_DIR/state/train.stop_requested"',
            'export HPC_STOPPED_EARLY="$HPC_EXPERIMENT_DIR/state/train.stopped_early"',
            'mkdir -p "$HPC_EXPERIMENT_DIR/state"',
            'nproc=${SKYPILOT_NUM_GPUS_PER_NODE:-0}; [ "$nproc" -gt 0 ] || nproc=1',
            'master=$(echo "$SKYPILOT_NODE_IPS" | head -n 1)',
            'echo "[hpc-launch] train: node rank $SKYPILOT_NODE_RANK of $SKYPILOT_NUM_NODES, $nproc process(es), '
            'rendezvous at $master:29500"',
            'torchrun --nnodes="$SKYPILOT_NUM_NODES" --node_rank="$SKYPILOT_NODE_RANK" --nproc_per_node="$nproc" '
            f'--master_addr="$master" --master_port=29500 {shlex.join([*body.entrypoint, str(body.config_path)])}',
        ]
    else:
        raise LaunchError(f"the {job.key} job ({type(body).__name__.lower()}) runs on SLURM only; SkyPilot runs "
                          "run, train, consolidate and eval jobs")
    return "\n".join(lines) + "\n"


def task_config(job: Job, plan: Plan, cloud: Cloud) -> dict:
    """The task YAML (as a dict) of one job: no secrets, nothing but what `sky launch` reads."""
    if job.array is not None:
        raise LaunchError(f"the {job.key} job is an array; arrays run on SLURM only")
    if any(d.external for d in job.dependencies):
        raise LaunchError("--dependency names SLURM jobs; SkyPilot jobs of a launch run one after another")
    config: dict[str, object] = {"name": cloud.task_name or job.name}
    if job.resources.nodes > 1:
        config["num_nodes"] = job.resources.nodes
    config["resources"] = resources(job, cloud)
    config["envs"] = {key: str(value) for key, value in job.prelude.env.items()}
    if cloud.sync:
        config["workdir"] = str(job.prelude.workdir)
    if job.job_type != "run":  # its programs and configs, at the same path as here
        config["file_mounts"] = {str(plan.experiment_dir): str(plan.experiment_dir)}
    config["run"] = run_script(job, plan, cloud)
    return config
