"""Launch options, declared once: each field's type, default and help make its command-line flag.

Groups are dataclasses (common, resources, one per job type); LaunchOptions is all of them. None
means "not given": the config file, the profile or a built-in default decides.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any


def flag(default: Any = None, help: str | None = None, **argparse: Any) -> Any:
    """A dataclass field that is also a command-line flag (argparse keywords: choices, metavar, ...)."""
    return field(default=default, metadata={"help": help, "argparse": argparse})


def passthrough(kind: type) -> Any:
    """A LLaMA-Factory key with its own flag: given, it overrides the train YAML."""
    return field(default=None, metadata={"help": None, "argparse": {"type": kind}, "passthrough": True})


@dataclass
class CommonOptions:
    """launch"""

    job_type: str = flag("train", "what to launch (default: train)")
    cluster: str | None = flag(help="cluster profile name (default: detected from SLURM's ClusterName, then the hostname)")
    job_name: str | None = flag(help="job name and experiment directory name (default: <config>_<timestamp>)")
    experiments_dir: str | None = flag(help="where experiment directories go (default: $EXPERIMENTS_DIR from the "
                                            "dotenv, else ./experiments)")
    dry_run: bool = flag(False, "render and record everything, submit nothing")
    wait: bool = flag(False, "after submitting, wait for the jobs and report how they ended")
    dependency: str | None = flag(help="dependency for the first job, e.g. afterok:12345")
    secrets_env: str | None = flag(help="your private secrets file, sourced by jobs at run time "
                                        "(default: $DC_AGENT_SECRET_ENV)")
    dotenv: str | None = flag(help="dotenv starter pack to use instead of the profile's")
    prefetch: bool = flag(False, "download Hub models and datasets on this node first (always on clusters whose "
                                 "compute nodes have no internet)")
    tunnel: bool = flag(False, "SSH SOCKS tunnel from the job to the profile's tunnel_host; the job's command runs "
                               "under proxychains4 (needs SSH_KEY, a key path, in your secrets file or dotenv)")


@dataclass
class ResourceOptions:
    """resources (default: the cluster profile)"""

    partition: str | None = flag()
    account: str | None = flag()
    qos: str | None = flag()
    time_limit: str | None = flag(help="wall time, e.g. 04:00:00 or 1-00:00:00")
    num_nodes: int | None = flag(help="nodes (default: 1)")
    gpus_per_node: int | None = flag(help="GPUs per node (default: all of the node's)")


@dataclass
class TrainOptions:
    """train (LLaMA-Factory): explicit flags > YAML > profile > defaults"""

    train_config_path: str | None = flag(help="LLaMA-Factory YAML")
    global_batch_size: int | None = flag(help="sets gradient_accumulation_steps exactly, or errors")
    max_restarts: int = flag(3, "requeues after a time limit or preemption, resuming from the newest checkpoint "
                                "(default: 3; 0 never requeues)")
    model_name_or_path: str | None = passthrough(str)
    dataset: str | None = passthrough(str)
    dataset_dir: str | None = passthrough(str)
    template: str | None = passthrough(str)
    finetuning_type: str | None = passthrough(str)
    output_dir: str | None = passthrough(str)
    deepspeed: str | None = passthrough(str)
    learning_rate: float | None = passthrough(float)
    num_train_epochs: float | None = passthrough(float)
    max_steps: int | None = passthrough(int)
    per_device_train_batch_size: int | None = passthrough(int)
    gradient_accumulation_steps: int | None = passthrough(int)
    cutoff_len: int | None = passthrough(int)
    save_steps: int | None = passthrough(int)
    logging_steps: int | None = passthrough(int)
    report_to: str | None = passthrough(str)
    run_name: str | None = passthrough(str)
    hub_model_id: str | None = passthrough(str)
    seed: int | None = passthrough(int)

    @property
    def train_overrides(self) -> dict[str, object]:
        """The LLaMA-Factory keys given as flags."""
        return {f.name: getattr(self, f.name) for f in fields(TrainOptions)
                if f.metadata.get("passthrough") and getattr(self, f.name) is not None}


@dataclass
class ConsolidateOptions:
    """consolidate: ZeRO shards -> safetensors (--job_type consolidate, or --consolidate after train)"""

    consolidate: bool = flag(False, "chain a consolidate job after train (afterok)")
    consolidate_input: str | None = flag(help="ZeRO checkpoint dir, training output dir, or Hub repo id "
                                              "(org/name[@rev])")
    consolidate_output_dir: str | None = flag(help="where the safetensors go (default: next to the checkpoints)")
    consolidate_output_repo: str | None = flag(help="also upload to this Hub repo (private unless --public); adds a "
                                                    "commit")
    consolidate_time_limit: str | None = flag()
    consolidate_partition: str | None = flag()
    dtype: str = flag("fp32", "weights dtype (default: fp32)", choices=("fp32", "bf16"))
    public: bool = flag(False, "create the upload repo public")
    overwrite: bool = flag(False, "write into a non-empty output dir (only its own files)")


@dataclass
class DatagenOptions:
    """datagen: task generation, then traces in chunks as one throttled job array"""

    datagen_config: str | None = flag(help="YAML with engine (openai, anthropic, vllm_local, none), model, server, "
                                           "chunking")
    datagen_script: str | None = flag(help="your generator, called with --stage tasks (see README: generator "
                                           "interface)")
    datagen_target_repo: str | None = flag(help="dataset repo for the generated tasks")
    datagen_extra_args: str | None = flag(help="extra arguments for the generator, one shell-quoted string")
    datagen_output_dir: str | None = flag(help="where tasks are written (default: <experiment>/outputs/tasks)")
    enable_task_gen: bool = flag(True, "generate tasks (default: yes)", optional_bool=True)
    enable_trace_gen: bool = flag(False, "generate traces (default: no)", optional_bool=True)
    trace_script: str | None = flag(help="generator for --stage traces (default: --datagen_script)")
    trace_target_repo: str | None = flag(help="dataset repo for traces; chunk i goes to <repo>-chunk00i")
    trace_input_path: str | None = flag(help="existing tasks (instead of generating them)")
    trace_output_dir: str | None = flag(help="where traces are written (default: <experiment>/outputs/traces)")
    trace_harbor_config: str | None = flag()
    trace_model: str | None = flag()
    trace_agent_name: str | None = flag()
    trace_agent_kwargs: str | None = flag(help="JSON object passed to the agent")
    trace_n_concurrent: int | None = flag()
    trace_env: str | None = flag()
    chunk_size: int | None = flag(help="tasks per chunk when the tasks exist at launch")
    chunk_parallelism: int | None = flag(help="chunks running at once (the array's %%N)")
    num_chunks: int | None = flag(help="array size when tasks are generated in the same launch")
    server_wait_timeout: int = flag(1800, "seconds jobs wait for the inference server (default 1800)")
    only_failed_chunks: str | None = flag(help="resubmit only the unfinished chunks of that launch",
                                          metavar="EXPERIMENT_DIR")


@dataclass
class EvalOptions:
    """eval: the profile's eval_command on the model, after the last step (afterok)"""

    eval_tasks: str | None = flag(help="tasks for the cluster's eval harness (local: a held-out data JSON)")
    eval_time_limit: str | None = flag()
    eval_num_nodes: int | None = flag()


GROUPS: tuple[type, ...] = (CommonOptions, ResourceOptions, TrainOptions, ConsolidateOptions, DatagenOptions,
                            EvalOptions)


@dataclass
class LaunchOptions(EvalOptions, DatagenOptions, ConsolidateOptions, TrainOptions, ResourceOptions, CommonOptions):
    """Every launch option (the CLI's flags, or the Python API's keywords)."""


def group_values(opts: LaunchOptions, group: type) -> dict[str, Any]:
    """The values of one option group, in declaration order."""
    return {f.name: getattr(opts, f.name) for f in fields(group)}
