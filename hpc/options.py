"""Launch options, declared once: each field's type, default and help make its command-line flag.

Groups are dataclasses (common, resources, one per job type) that only declare fields; LaunchOptions is all of
them. None means "not given": the config file, the profile or a built-in default decides.

No `from __future__ import annotations` here: every start of the CLI reads these annotations (launch.parser), and
evaluated ones are read without compiling each one.
"""

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from hpc.records import record


def flag(default: Any = None, help: str | None = None, **argparse: Any) -> Any:
    """A dataclass field that is also a command-line flag (argparse keywords: choices, metavar, ...)."""
    return field(default=default, metadata={"help": help, "argparse": argparse})


def parse_bool(text: str) -> bool:
    """true/false, yes/no, on/off, 1/0 (upstream's spelling of LLaMA-Factory booleans)."""
    word = text.strip().lower()
    if word in ("true", "yes", "y", "on", "1"):
        return True
    if word in ("false", "no", "n", "off", "0"):
        return False
    raise ValueError(text)


parse_bool.__name__ = "true/false"  # what argparse names in "invalid ... value"


def parse_float(text: str) -> float:
    """A finite number: nan and inf are refused (no setting takes them)."""
    import math

    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


parse_float.__name__ = "finite number"


#: The decorator of an option group: it only declares fields, keyword-only (LaunchOptions, which has all of them, is
#: the record that gets instantiated), so it gets no __init__, __repr__ or __eq__ of its own to compile at start-up.
group = dataclass(init=False, repr=False, eq=False, kw_only=True)


def passthrough(kind: type) -> Any:
    """A LLaMA-Factory key with its own flag: given, it overrides the train YAML."""
    parse = {bool: parse_bool, float: parse_float}.get(kind, kind)
    return field(default=None, metadata={"help": None, "argparse": {"type": parse, "metavar": kind.__name__.upper()},
                                         "passthrough": True})


@group
class CommonOptions:
    """launch"""

    job_type: str = flag("train", "what to launch (default: train)")
    backend: str = flag("slurm", "where jobs run: slurm, or skypilot (clouds, Kubernetes, SSH node pools and "
                                 "Slurm through SkyPilot; pip install 'hpc-launch[cloud]') (default: slurm)",
                        choices=("slurm", "skypilot"))
    cluster: str | None = flag(help="cluster profile name (default: detected from SLURM's ClusterName, then the hostname)")
    job_name: str | None = flag(help="job name and experiment directory name (default: <config>_<timestamp>)")
    experiments_dir: str | None = flag(help="where experiment directories go (default: $EXPERIMENTS_DIR from the "
                                            "dotenv, else ./experiments)")
    dry_run: bool = flag(False, "render and record everything, submit nothing")
    validate: bool | None = flag(None, "check every job with `sbatch --test-only` on the controller before anything is "
                                       "written or submitted (default: yes when submitting; in a dry run when this "
                                       "node's controller is the profile's cluster)", optional_bool=True)
    wait: bool = flag(False, "after submitting, wait for the jobs and report how they ended")
    dependency: str | None = flag(help="dependency for the first job, e.g. afterok:12345")
    secrets_env: str | None = flag(help="your private secrets file, sourced by jobs at run time "
                                        "(default: $DC_AGENT_SECRET_ENV)")
    dotenv: str | None = flag(help="dotenv starter pack to use instead of the profile's")
    prefetch: bool = flag(False, "download Hub models and datasets on this node first (always on clusters whose "
                                 "compute nodes have no internet)")
    tunnel: bool = flag(False, "SSH SOCKS tunnel from the job to the profile's tunnel_host; the job's command runs "
                               "under proxychains4 (needs SSH_KEY, a key path, in your secrets file or dotenv)")


@group
class ResourceOptions:
    """resources (default: the cluster profile)"""

    partition: str | None = flag()
    account: str | None = flag()
    qos: str | None = flag()
    time_limit: str | None = flag(help="wall time, e.g. 04:00:00 or 1-00:00:00")
    num_nodes: int | None = flag(help="nodes (default: 1)")
    gpus_per_node: int | None = flag(help="GPUs per node (default: all of the node's)")
    cpus_per_node: int | None = flag(help="CPUs per node of the train job (default: the GPU share of the node's)")
    gpu_type: str | None = flag(help="GPU type, on clusters whose profile lists several (gpu_types), e.g. A100-80GB "
                                     "on perlmutter (default: the profile's gpu_type)")
    gpus_type: str | None = flag(help="same as --gpu_type (upstream's spelling)")


@group
class TrainOptions:
    """train (LLaMA-Factory): explicit flags > YAML > profile > defaults"""

    train_config_path: str | None = flag(help="LLaMA-Factory YAML")
    global_batch_size: int | None = flag(help="sets gradient_accumulation_steps exactly, or errors (a "
                                              "global_batch_size key in the YAML means the same)")
    max_restarts: int = flag(3, "requeues after a time limit or preemption, resuming from the newest checkpoint "
                                "(default: 3; 0 never requeues)")
    train_extra_args: str | None = flag(help="more LLaMA-Factory keys, as explicit as flags: \"--key value "
                                             "key2=value2\" (values read as YAML)")
    # LLaMA-Factory keys with their own flags (upstream's set): given, they override the YAML.
    model_name_or_path: str | None = passthrough(str)
    stage: str | None = passthrough(str)
    do_train: bool | None = passthrough(bool)
    finetuning_type: str | None = passthrough(str)
    deepspeed: str | None = passthrough(str)
    packing: bool | None = passthrough(bool)
    neat_packing: bool | None = passthrough(bool)
    enable_liger_kernel: bool | None = passthrough(bool)
    flash_attn: str | None = passthrough(str)
    dataset: str | None = passthrough(str)
    dataset_dir: str | None = passthrough(str)
    template: str | None = passthrough(str)
    formatting: str | None = passthrough(str)
    messages: str | None = passthrough(str)
    system: str | None = passthrough(str)
    prompt_column: str | None = passthrough(str)
    query_column: str | None = passthrough(str)
    response_column: str | None = passthrough(str)
    history_column: str | None = passthrough(str)
    role_tag: str | None = passthrough(str)
    user_tag: str | None = passthrough(str)
    content_tag: str | None = passthrough(str)
    assistant_tag: str | None = passthrough(str)
    cutoff_len: int | None = passthrough(int)
    overwrite_cache: bool | None = passthrough(bool)
    preprocessing_num_workers: int | None = passthrough(int)
    mix_strategy: str | None = passthrough(str)
    interleave_probs: str | None = passthrough(str)
    streaming: bool | None = passthrough(bool)
    buffer_size: int | None = passthrough(int)
    max_samples: int | None = passthrough(int)
    val_size: float | None = passthrough(float)
    eval_on_each_dataset: bool | None = passthrough(bool)
    disable_shuffling: bool | None = passthrough(bool)
    output_dir: str | None = passthrough(str)
    save_strategy: str | None = passthrough(str)
    save_steps: int | None = passthrough(int)
    logging_steps: int | None = passthrough(int)
    plot_loss: bool | None = passthrough(bool)
    overwrite_output_dir: bool | None = passthrough(bool)
    per_device_train_batch_size: int | None = passthrough(int)
    gradient_accumulation_steps: int | None = passthrough(int)
    gradient_checkpointing: bool | None = passthrough(bool)
    learning_rate: float | None = passthrough(float)
    adam_beta1: float | None = passthrough(float)
    adam_beta2: float | None = passthrough(float)
    num_train_epochs: float | None = passthrough(float)
    max_steps: int | None = passthrough(int)
    lr_scheduler_type: str | None = passthrough(str)
    warmup_ratio: float | None = passthrough(float)
    weight_decay: float | None = passthrough(float)
    max_grad_norm: float | None = passthrough(float)
    bf16: bool | None = passthrough(bool)
    ddp_timeout: int | None = passthrough(int)
    eval_strategy: str | None = passthrough(str)
    report_to: str | None = passthrough(str)
    run_name: str | None = passthrough(str)
    seed: int | None = passthrough(int)
    push_to_hub: bool | None = passthrough(bool)
    hub_model_id: str | None = passthrough(str)
    lora_rank: int | None = passthrough(int)
    lora_alpha: int | None = passthrough(int)
    lora_dropout: float | None = passthrough(float)

    @property
    def train_overrides(self) -> dict[str, object]:
        """The LLaMA-Factory keys given as flags."""
        return {f.name: getattr(self, f.name) for f in fields(TrainOptions)
                if f.metadata.get("passthrough") and getattr(self, f.name) is not None}


@group
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


@group
class DatagenOptions:
    """datagen: task generation, then traces in chunks as one throttled job array (flags win over the config)"""

    ENGINE_TYPES: ClassVar[tuple[str, ...]] = ("openai", "anthropic", "vllm_local", "gemini_openai", "google_gemini",
                                               "none")
    BACKEND_TYPES: ClassVar[tuple[str, ...]] = ("vllm", "ray", "none")

    datagen_config: str | None = flag(help="datagen YAML, ours or upstream's format (default: $DATAGEN_CONFIG_PATH; "
                                           "not needed with --datagen_engine)")
    datagen_engine: str | None = flag(help="engine type, overriding the config's", choices=ENGINE_TYPES)
    datagen_model: str | None = flag(help="the engine's model (default: the config's, else --trace_model)")
    datagen_script: str | None = flag(help="your generator, called with --stage tasks (see README: generator "
                                           "interface)")
    datagen_target_repo: str | None = flag(help="dataset repo for the generated tasks")
    datagen_input_dir: str | None = flag(help="passed to the generator as --input-dir")
    datagen_extra_args: str | None = flag(help="extra arguments for the task generator, one shell-quoted string "
                                               "(last, so '--stage both' wins)")
    datagen_output_dir: str | None = flag(help="where tasks are written (default: <experiment>/outputs/tasks)")
    task_type: str | None = flag(help="passed to both stages as --task-type (only if your generator defines it)")
    disable_verification: bool = flag(False, "pass --disable-verification to both stages")
    enable_task_gen: bool = flag(True, "generate tasks (default: yes)", optional_bool=True)
    enable_trace_gen: bool = flag(False, "generate traces (default: no; every --trace_* and chunk flag needs it)",
                                  optional_bool=True)
    trace_script: str | None = flag(help="generator for --stage traces (default: --datagen_script)")
    trace_target_repo: str | None = flag(help="dataset repo for traces; chunk i goes to <repo>-chunk00i")
    trace_input_path: str | None = flag(help="existing tasks (instead of generating them)")
    trace_output_dir: str | None = flag(help="where traces are written (default: <experiment>/outputs/traces)")
    trace_engine: str | None = flag(help="engine type of the trace stage (default: the tasks')", choices=ENGINE_TYPES)
    trace_backend: str | None = flag(help="backend type of the trace stage (default: the config's)",
                                     choices=BACKEND_TYPES)
    trace_harbor_config: str | None = flag(help="Harbor job YAML, passed as --trace-harbor-config")
    trace_model: str | None = flag(help="model of the trace stage (default: the Harbor YAML's agent, else the "
                                        "engine's)")
    trace_agent_name: str | None = flag()
    trace_agent_kwargs: str | None = flag(help="JSON object for the agent, over the config's extra_agent_kwargs")
    trace_n_concurrent: int | None = flag()
    trace_env: str | None = flag()
    trace_export_subagents: bool = flag(True, "--trace-export-subagents, or --trace-skip-subagents with --no-... "
                                              "(default: export)", optional_bool=True)
    trace_eval_only: bool = flag(False, "pass --trace-eval-only")
    trace_agent_timeout_sec: float | None = flag()
    trace_verifier_timeout_sec: float | None = flag()
    chunk_size: int | None = flag(help="tasks per chunk when the tasks exist at launch")
    chunk_parallelism: int | None = flag(help="chunks running at once, the array's %%N (default: the config's "
                                              "chunk_parallelism or chunk_array_max, else 4)")
    num_chunks: int | None = flag(help="array size when tasks are generated in the same launch")
    server_wait_timeout: int | None = flag(help="seconds jobs wait for the inference server (default: the config's "
                                                "healthcheck attempts x delay, else 1800)")


@group
class EvalOptions:
    """eval: lm_eval (vLLM on GPUs, HF on CPU) or the profile's eval_command, chained (afterok) or --job_type eval"""

    eval_tasks: str | None = flag(help="lm_eval task names, comma-separated (with a profile eval_command: its {tasks}; "
                                       "local: a held-out data JSON)")
    eval_model: str | None = flag(help="--job_type eval: the model, a local directory or a Hub repo id "
                                       "(org/name[@rev])")
    eval_include_path: str | None = flag(help="a directory of your own lm_eval task YAMLs (lm_eval --include_path), "
                                              "e.g. examples/eval/tasks")
    eval_extra_args: str | None = flag(help="more lm_eval arguments, one shell-quoted string, e.g. \"--limit 100 "
                                            "--num_fewshot 5 --batch_size 16\" (last, so they win)")
    eval_time_limit: str | None = flag()
    eval_num_nodes: int | None = flag(help="nodes (default: 1, all the built-in harness uses)")
    eval_gpus_per_node: int | None = flag(help="GPUs (default: --gpus_per_node; 0 runs lm_eval's HF backend on CPU, "
                                               "else vLLM with tensor parallelism over them)")
    eval_partition: str | None = flag()


@group
class PathOptions:
    """paths (override the dotenv's)"""

    #: Flag -> the variable it sets in every job's environment.
    VARIABLES: ClassVar[dict[str, str]] = {"checkpoints_dir": "CHECKPOINTS_DIR", "models_dir": "MODELS_DIR",
                                           "datasets_dir": "DATASETS_DIR", "tokenized_dir": "TOKENIZED_DATASETS_DIR"}

    checkpoints_dir: str | None = flag(help="$CHECKPOINTS_DIR: where train output_dir defaults to <dir>/<job name>")
    models_dir: str | None = flag(help="$MODELS_DIR")
    datasets_dir: str | None = flag(help="$DATASETS_DIR")
    tokenized_dir: str | None = flag(help="$TOKENIZED_DATASETS_DIR")
    job_creator: str | None = flag(help="who launched it, recorded as created_by in the run summary (default: $USER)")


@group
class RunOptions:
    """run: any command (--job_type run)"""

    command: str | None = flag(help="the command, run by bash in --workdir")
    workdir: str | None = flag(help="where it runs; with --backend skypilot the directory synced to the cluster "
                                    "(default: the current directory)")


@group
class CloudOptions:
    """clouds (--backend skypilot): infra, resources, lifecycle"""

    cloud_provider: str | None = flag(help="SkyPilot infra, comma-separated fallbacks in order, e.g. gcp,aws,lambda "
                                           "or slurm/mycluster (default: any enabled)")
    accelerator: str | None = flag(help="GPUs, comma-separated fallbacks in order, e.g. H100:1,A100-80GB:1 "
                                        "(default: none; a name without a count takes --gpus_per_node)")
    region: str | None = flag()
    zone: str | None = flag()
    use_spot: bool = flag(False, "spot/preemptible instances")
    docker_image: str | None = flag(help="container image of the task; 'auto': the gpu-1x/4x/8x image by GPU count "
                                         "(default: the node's own environment)")
    no_sync: bool = flag(False, "do not sync the working directory to the cluster (its image has the code)")
    autostop: int = flag(30, "idle minutes before the cluster stops (is torn down where it cannot stop, e.g. "
                             "Slurm); -1 never (default: 30)")
    down: bool = flag(False, "tear the cluster down when the jobs end, also on error, timeout and Ctrl-C")
    cluster_name: str | None = flag(help="SkyPilot cluster: reused (exec) when it is up, else launched "
                                         "(default: hpc-<job name>)")
    remote_output_subdir: str = flag("outputs", "outputs on the cluster, under its synced working directory "
                                                "($HPC_OUTPUT_DIR) (default: outputs)")
    local_sync_dir: str | None = flag(help="where outputs are synced back, before any teardown "
                                           "(default: <experiment>/outputs)")
    task_name: str | None = flag(help="SkyPilot task name (default: the job's name)")
    timeout_minutes: float | None = flag(help="cancel the jobs (and with --down tear down) after this long")
    task: str | None = flag(help="launch this SkyPilot task YAML as it is (with --backend skypilot)")


GROUPS: tuple[type, ...] = (CommonOptions, ResourceOptions, PathOptions, TrainOptions, ConsolidateOptions,
                            DatagenOptions, EvalOptions, RunOptions, CloudOptions)
#: What `--help` shows: always these groups; with --job_type X also X's; with --backend skypilot also the cloud's.
HELP_ALWAYS: tuple[type, ...] = (CommonOptions, ResourceOptions)
HELP_BY_JOB_TYPE: dict[str, tuple[type, ...]] = {
    "train": (PathOptions, TrainOptions, ConsolidateOptions, EvalOptions), "datagen": (DatagenOptions,),
    "consolidate": (ConsolidateOptions, EvalOptions), "eval": (EvalOptions,), "run": (RunOptions,)}
HELP_BY_BACKEND: dict[str, tuple[type, ...]] = {"slurm": (), "skypilot": (CloudOptions,)}


@record(eq=True, frozen=False)
class LaunchOptions(CloudOptions, RunOptions, EvalOptions, DatagenOptions, ConsolidateOptions, TrainOptions,
                    PathOptions, ResourceOptions, CommonOptions):
    """Every launch option (the CLI's flags, or the Python API's keywords: keywords only, the rest from the field
    defaults)."""

    def __repr__(self) -> str:
        """Only the options that differ from their defaults: all of them would hide those."""
        given = (f"{f.name}={getattr(self, f.name)!r}" for f in fields(self) if getattr(self, f.name) != f.default)
        return f"LaunchOptions({', '.join(given)})"


def group_values(opts: LaunchOptions, group: type) -> dict[str, Any]:
    """The values of one option group, in declaration order."""
    return {f.name: getattr(opts, f.name) for f in fields(group)}
