"""Upstream (OpenThoughts-Agent `hpc.launch`) spellings: accepted where they mean something here, refused with
one line naming the replacement where they do not. Checked before argparse, so the message is ours."""

from __future__ import annotations

from collections.abc import Sequence

from hpc.errors import LaunchError

#: Upstream job types -> ours.
JOB_TYPE_ALIASES = {"sft": "train"}

#: Upstream flags that do not exist here -> what to use instead.
REPLACED = {
    "num_gpus": "use --gpus_per_node",
    "name": "use --cluster",
    "internet_node": "profiles say whether compute nodes have internet; on JSC use --tunnel (SSH SOCKS proxy)",
    "train_sbatch_path": "templates are shared; put your own train.sbatch.j2 in a directory named by "
                         "HPC_LAUNCH_TEMPLATES",
    "cpus_per_gpu": "use --cpus_per_node (CPUs follow the GPU share by default)",
    "total_partition_nodes": "node caps come from the cluster profile's partitions",
    "image": "it was unused upstream; set the container in your profile's env_activation",
    "base_model": "it was unused upstream; the model is model_name_or_path",
    "chat_template": "set LLaMA-Factory's template in the YAML or with --template",
    "attn": "stock LLaMA-Factory calls it --flash_attn (auto, disabled, sdpa, fa2)",
    "use_mca": "the MCA trainer is not supported; use --job_type train (DeepSpeed or FSDP from the YAML)",
    "pretokenize": "LLaMA-Factory tokenizes in the train job; reuse a tokenized dataset with tokenized_path in the YAML",
    "pretok_large": "LLaMA-Factory tokenizes in the train job; reuse a tokenized dataset with tokenized_path in the YAML",
    "pinggy_persistent_url": "Pinggy tunnels are not supported; datagen's server job publishes its endpoint itself",
    "pinggy_ssh_command": "Pinggy tunnels are not supported; datagen's server job publishes its endpoint itself",
    "pinggy_debugger_url": "Pinggy tunnels are not supported; datagen's server job publishes its endpoint itself",
    "use_unsloth_gc": "pass it with --train_extra_args if your LLaMA-Factory has it",
    "consolidate_workdir": "use --consolidate_output_dir (nothing is wiped; it must be empty or --overwrite)",
    "consolidate_base_repo": "tokenizer and config files come from the checkpoint itself",
    "consolidate_commit_message": "uploads are one commit with a fixed message",
    "sandbox_cpu": "pass sandbox settings to your generator with --datagen_extra_args",
    "sandbox_memory_gb": "pass sandbox settings to your generator with --datagen_extra_args",
    "sandbox_disk_gb": "pass sandbox settings to your generator with --datagen_extra_args",
    "sandbox_gpu": "pass sandbox settings to your generator with --datagen_extra_args",
    "trace_use_gpu": "trace jobs use the launch's vLLM server job (vllm_server in the datagen config); they need no GPUs",
}
#: Flags of earlier hpc-launch versions -> what replaced them.
RETIRED = {"only_failed_chunks": "hpc-launch retry EXPERIMENT reruns only the chunks without a done marker, in the "
                                 "same experiment"}
#: Upstream job types that do not exist here.
JOB_TYPES_REPLACED = {
    "sft_mca": "the MCA trainer is not supported; use --job_type train",
    "pretokenize": "LLaMA-Factory tokenizes in the train job; use --job_type train",
    "rl": "RL jobs are not supported yet; use --job_type train for SFT",
}


_TRUE, _FALSE = ("true", "yes", "y", "on", "1"), ("false", "no", "n", "off", "0")


def translate(argv: Sequence[str], known: set[str], switches: set[str] = set()) -> list[str]:
    """argv with upstream spellings mapped to ours; LaunchError for an upstream-only flag or job type.

    `known` holds our option names: a flag we define is never refused here. `switches` are our --x/--no-x
    options, which upstream wrote as `--x true|false`."""
    out, drop = list(argv), set()
    for i, word in enumerate(out):
        if not word.startswith("--") or " " in word or i in drop:
            continue
        name, eq, value = word[2:].partition("=")
        name = name.replace("-", "_")
        if name in REPLACED and name not in known:
            raise LaunchError(f"--{name} is upstream's; {REPLACED[name]}")
        if name in RETIRED:
            raise LaunchError(f"--{name} was replaced: {RETIRED[name]}")
        answer = value if eq else (out[i + 1] if i + 1 < len(out) else "")
        if name in switches and answer.lower() in _TRUE + _FALSE:
            out[i] = f"--{name}" if answer.lower() in _TRUE else f"--no-{name}"
            if not eq:
                drop.add(i + 1)
            continue
        if name == "job_type":
            where = i if eq else i + 1
            kind = value if eq else (out[where] if where < len(out) else "")
            if kind in JOB_TYPES_REPLACED:
                raise LaunchError(f"--job_type {kind} is upstream's; {JOB_TYPES_REPLACED[kind]}")
            if kind in JOB_TYPE_ALIASES:
                out[where] = f"--job_type={JOB_TYPE_ALIASES[kind]}" if eq else JOB_TYPE_ALIASES[kind]
    return [word for i, word in enumerate(out) if i not in drop]
