"""Upstream's datagen config format: its sections with their defaults, strict key and type checks (with
did-you-mean), and the `vllm serve` command line a `vllm_server` section describes.

The normalized mapping (every key, defaults filled in) is what the generator reads as --engine-config, so it
holds upstream's keys only: a generator that loads it into upstream's schema accepts it unchanged.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping
from typing import Any

from hpc.errors import LaunchError

#: A key without a default.
REQUIRED = object()

Schema = dict[str, tuple[Any, Any]]  # key -> (type, or a nested Schema; default)

_OPENAI: Schema = {"api_key": (str, None), "api_key_env": (str, None), "organization": (str, None),
                   "project": (str, None)}
_ANTHROPIC: Schema = {"api_key": (str, None), "api_key_env": (str, None)}
VLLM_LOCAL: Schema = {"api_key": (str, None), "api_key_env": (str, None), "endpoint_json": (str, None),
                       "base_url": (str, None), "model_name": (str, None), "healthcheck_interval": (int, None)}
ENGINE: Schema = {
    "type": (str, REQUIRED), "model": (str, None), "max_output_tokens": (int, None), "healthcheck_interval": (int, 300),
    "request_params": (dict, {}), "openai": (_OPENAI, None), "anthropic": (_ANTHROPIC, None),
    "vllm_local": (VLLM_LOCAL, None), "extra_args": (dict, None),
}
BACKEND: Schema = {
    "type": (str, "vllm"), "wait_for_endpoint": (bool, False), "endpoint_json_path": (str, None),
    "ray_port": (int, 6379), "api_port": (int, 8000), "tensor_parallel_size": (int, 1),
    "pipeline_parallel_size": (int, 1), "data_parallel_size": (int, 1), "ray_cgraph_submit_timeout": (float, None),
    "ray_cgraph_get_timeout": (float, None), "ray_cgraph_max_inflight_executions": (int, None),
    "healthcheck_max_attempts": (int, None), "healthcheck_retry_delay": (int, None),
}
VLLM_SERVER: Schema = {
    "model_path": (str, REQUIRED), "num_replicas": (int, 1), "tensor_parallel_size": (int, 1),
    "pipeline_parallel_size": (int, 1), "data_parallel_size": (int, 1), "custom_model_name": (str, None),
    "endpoint_json_path": (str, None), "time_limit": (str, None), "hf_overrides": (str, None),
    "use_deep_gemm": (bool, False), "max_num_seqs": (int, None), "gpu_memory_utilization": (float, None),
    "enable_expert_parallel": (bool, False), "swap_space": (int, None), "max_seq_len_to_capture": (int, None),
    "max_model_len": (int, None), "cpu_offload_gb": (float, None), "kv_offloading_size": (float, None),
    "kv_offloading_backend": (str, None), "trust_remote_code": (bool, False), "disable_log_requests": (bool, False),
    "enable_auto_tool_choice": (bool, False), "tool_call_parser": (str, None), "reasoning_parser": (str, None),
    "logging_level": (str, None), "extra_args": ((list, str, dict), None),
}
TOP: Schema = {"engine": (ENGINE, REQUIRED), "backend": (BACKEND, {}), "vllm_server": (VLLM_SERVER, None),
               "extra_agent_kwargs": (dict, {}), "chunk_array_max": (int, None)}

#: Our format's whole-number settings and their least values (check_ours).
OUR_LEAST = {"chunk_size": 1, "chunk_parallelism": 1, "cpus_per_task": 1, "gpus": 0, "port": 1, "health_timeout": 1}
#: Upstream's whole-number settings that are counts, sizes, ports or delays, and their least values.
LEAST = {"tensor_parallel_size": 1, "pipeline_parallel_size": 1, "data_parallel_size": 1, "num_replicas": 1,
         "api_port": 1, "ray_port": 1, "healthcheck_max_attempts": 1, "healthcheck_retry_delay": 1,
         "healthcheck_interval": 1, "chunk_array_max": 1, "max_num_seqs": 1}

# vllm_server key -> `vllm serve` flag (value flags, then switches), in the order they are written.
_VALUE_FLAGS = ("max_model_len", "max_num_seqs", "gpu_memory_utilization", "swap_space", "max_seq_len_to_capture",
                "cpu_offload_gb", "kv_offloading_size", "kv_offloading_backend", "hf_overrides", "tool_call_parser",
                "reasoning_parser")
_SWITCHES = ("enable_expert_parallel", "trust_remote_code", "enable_auto_tool_choice")
_SECRET_FLAG = re.compile(r"--api[-_]key(=|$)")


def check_ours(section: Mapping[str, Any], where: str, prefix: str = "") -> None:
    """Our format's settings (chunk_size, ..., and the server section's) as whole numbers in range, and a command."""
    for key, least in OUR_LEAST.items():
        value = section.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least
                                  or (key == "port" and value > 65535)):
            span = "from 1 to 65535" if key == "port" else f"of at least {least}"
            raise LaunchError(f"{where}: {prefix}{key} must be a whole number {span}, not {value!r}")
    command = section.get("command")
    if command is not None and not (isinstance(command, list) and all(isinstance(a, (str, int, float)) for a in command)):
        raise LaunchError(f"{where}: {prefix}command must be a list of arguments such as "
                          "[vllm, serve, \"{model}\", --port, \"{port}\"]")


def unknown_key(key: str, valid: set[str], where: str, prefix: str = "") -> LaunchError:
    """'unknown key' (prefix: its section, e.g. "engine."), with the closest valid key when there is one."""
    import difflib  # only when refusing

    close = difflib.get_close_matches(key, sorted(valid), n=1)
    hint = f"did you mean {prefix + close[0]!r}?" if close else f"valid keys: {', '.join(sorted(valid))}"
    return LaunchError(f"{where}: unknown key {prefix + key!r}; {hint}")


def _type_ok(value: Any, kind: Any) -> bool:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool):
        return bool in kinds
    return isinstance(value, kinds) or (float in kinds and isinstance(value, int))


def normalize(raw: Any, schema: Schema, where: str, prefix: str = "") -> dict[str, Any]:
    """`raw` (section `prefix` of the file `where`) checked against `schema`, every key present (defaults filled
    in), nested sections likewise."""
    if not isinstance(raw, dict):
        raise LaunchError(f"{where}: {prefix.rstrip('.') or 'the config'} must be a mapping, not {raw!r}")
    for key in raw:
        if key not in schema:
            raise unknown_key(str(key), set(schema), where, prefix)
    out: dict[str, Any] = {}
    for key, (kind, default) in schema.items():
        value = raw.get(key, default)
        if value is REQUIRED:
            raise LaunchError(f"{where}: {prefix}{key} is required")
        if key == "hf_overrides" and isinstance(value, dict):
            value = json.dumps(value)  # upstream keeps it as JSON text
        if isinstance(kind, dict):
            value = None if value is None else normalize(value, kind, where, f"{prefix}{key}.")
        elif value is not None and not _type_ok(value, kind):
            names = "/".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
            raise LaunchError(f"{where}: {prefix}{key} must be {names}, not {value!r}")
        elif value is not None and key in LEAST and (value < LEAST[key] or ("port" in key and value > 65535)):
            span = "from 1 to 65535" if "port" in key else f"at least {LEAST[key]}"
            raise LaunchError(f"{where}: {prefix}{key} must be {span}, not {value!r}")
        out[key] = float(value) if kind is float and value is not None else value
    return out


def extra_args(value: list | str | dict | None) -> list[str]:
    """vllm_server.extra_args as argv: a list as is, a string split like a shell, a mapping as --key value
    (true: a bare --key; false/null: left out; a list: the flag once per item)."""
    if value is None:
        return []
    if isinstance(value, str):
        try:
            return shlex.split(value)
        except ValueError as exc:
            raise LaunchError(f"vllm_server.extra_args {value!r} is not valid shell quoting ({exc}); fix the quotes "
                              "or write it as a list") from None
    if isinstance(value, list):
        return [str(v) for v in value if v is not None]
    argv: list[str] = []
    for key, item in value.items():
        name = key if str(key).startswith("--") else f"--{key}"
        for one in item if isinstance(item, list) else [item]:
            if one is True:
                argv.append(name)
            elif one is not None and one is not False:
                argv += [name, str(one)]
    return argv


def vllm_serve(server: dict[str, Any], where: str) -> tuple[list[str], dict[str, str]]:
    """The `vllm serve` argv of a normalized vllm_server section ({port} marks the job's port) and the
    environment variables it needs."""
    extra = extra_args(server["extra_args"])
    if any(_SECRET_FLAG.match(arg) for arg in extra):
        raise LaunchError(f"{where}: vllm_server.extra_args: no --api-key in a config; put VLLM_API_KEY=... in your "
                          "secrets file (vLLM reads it from the environment)")
    argv = ["vllm", "serve", server["model_path"], "--host", "0.0.0.0", "--port", "{port}",
            "--tensor-parallel-size", str(server["tensor_parallel_size"])]
    for key in ("pipeline_parallel_size", "data_parallel_size"):
        if server[key] > 1:
            argv += [f"--{key.replace('_', '-')}", str(server[key])]
    if server["custom_model_name"]:
        argv += ["--served-model-name", server["custom_model_name"]]
    for key in _VALUE_FLAGS:
        if (value := server[key]) is not None:
            argv += [f"--{key.replace('_', '-')}", f"{value:g}" if isinstance(value, float) else str(value)]
    argv += [f"--{key.replace('_', '-')}" for key in _SWITCHES if server[key]]
    env = {"VLLM_USE_DEEP_GEMM": "1"} if server["use_deep_gemm"] else {}
    if server["logging_level"]:
        env["VLLM_LOGGING_LEVEL"] = server["logging_level"]
    return argv + extra, env
