"""Datagen settings: the datagen config (ours or upstream's format) and the datagen options, validated together.

Our format names the engine as a string (`engine: vllm_local`, `model`, `server: {command, ...}`); upstream's
has mappings (`engine: {type, model, ...}`, `backend`, `vllm_server`, `extra_agent_kwargs`, `chunk_array_max`).
Both become one upstream-format mapping per stage (hpc.datagen_schema), which the generator reads.
"""

from __future__ import annotations

import copy
import math
import os
import shlex
from collections.abc import Mapping
from dataclasses import asdict, field, fields
from pathlib import Path
from typing import Any

from hpc import ROOT
from hpc.context import Context
from hpc.datagen_schema import TOP, VLLM_LOCAL, check_ours, normalize, unknown_key, vllm_serve
from hpc.errors import LaunchError
from hpc.hub_ids import check_repo_id
from hpc.options import DatagenOptions
from hpc.placeholders import fill
from hpc.profiles import profile_dirs
from hpc.readers import load_json, read_yaml
from hpc.records import record
from hpc.secret_rule import check_config
from hpc.timefmt import format_time, parse_time

CONFIG_DIRS = (ROOT / "examples" / "datagen",)
ENGINES, BACKENDS = DatagenOptions.ENGINE_TYPES, DatagenOptions.BACKEND_TYPES
#: API engines, and the variable their key is read from when the config names none (jobs source it from the
#: user's secrets file).
API_KEY_ENV = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}
_PROVIDER = {"openai": "openai", "anthropic": "anthropic", "gemini_openai": "gemini", "google_gemini": "gemini"}
_EXTRAS = {"chunk_size", "chunk_parallelism", "cpus_per_task"}  # ours, allowed in both formats
_OUR_KEYS = {"engine", "model", "backend", "server", *_EXTRAS}
_SERVER_KEYS = {"command", "gpus", "health_timeout", "port", "time_limit"}
_PLACEHOLDER_MODEL = "placeholder/override-at-runtime"


@record(eq=True, frozen=False)
class ServerSpec:
    """The launch's inference server job: its command ({port} marks the job's port) and resources."""

    command: list[str]
    model_name: str  # the served name: the endpoint JSON's model_name
    gpus: int
    port: int
    health_timeout: int
    time_limit: str | None
    env: dict[str, str] = field(default_factory=dict)


@record(eq=True, frozen=False)
class DatagenConfig:
    """The resolved datagen config: each stage's engine config (upstream format) and how the launch runs."""

    engine_config: dict[str, Any]
    trace_engine_config: dict[str, Any]
    server: ServerSpec | None
    trace_model: str | None
    chunk_size: int = 100
    chunk_parallelism: int = 4
    cpus_per_task: int = 1
    wait_timeout: int = 1800
    endpoint_file: str | None = None  # from the config (default: <experiment>/state/endpoint.json)

    @property
    def engine(self) -> str:
        return self.engine_config["engine"]["type"]

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> "DatagenConfig":
        server = data.get("server")
        return cls(**{**data, "server": ServerSpec(**server) if server else None})

    def record(self) -> dict[str, Any]:
        return asdict(self)

    def with_endpoint(self, config: dict[str, Any], endpoint_file: str) -> dict[str, Any]:
        """A stage's engine config as written for its generator: the launch's endpoint JSON filled in."""
        config = copy.deepcopy(config)
        if self.server and config["engine"]["type"] == "vllm_local":
            config["engine"]["vllm_local"] = {**(config["engine"]["vllm_local"] or normalize({}, VLLM_LOCAL, "")),
                                              "endpoint_json": endpoint_file}
            config["backend"]["endpoint_json_path"] = endpoint_file
            if config["vllm_server"]:
                config["vllm_server"]["endpoint_json_path"] = endpoint_file
        return config


def resolve_config_path(name: str) -> Path:
    """A path as given, else NAME(.yaml) in the user's profile directories or examples/datagen/."""
    path = Path(name).expanduser()
    if path.exists():
        return path
    for directory in (*profile_dirs()[:-1], *CONFIG_DIRS):
        for candidate in (directory / name, directory / f"{name}.yaml"):
            if candidate.is_file():
                return candidate
    raise LaunchError(f"datagen config {name!r} not found (a path, or a name in examples/datagen/); check --datagen_config")


def _read(d: DatagenOptions, environ: Mapping[str, str]) -> tuple[dict[str, Any], str]:
    name = d.datagen_config or environ.get("DATAGEN_CONFIG_PATH")
    if not name:
        if not d.datagen_engine:
            raise LaunchError("--job_type datagen needs --datagen_config (a YAML naming the engine) or "
                              "--datagen_engine TYPE")
        return {}, "--datagen_engine"
    path = resolve_config_path(name)
    return read_yaml(path, "datagen config", "check --datagen_config", empty={}), str(path)


def _parse(raw: dict[str, Any], where: str, d: DatagenOptions) -> tuple[dict[str, Any], dict[str, Any], dict]:
    """(upstream-format config, our extras, our server section) of either format."""
    extras = {k: raw[k] for k in _EXTRAS if raw.get(k) is not None}  # null: not given
    check_ours(extras, where)
    if isinstance(raw.get("engine"), dict):  # upstream's format
        for ours, instead in (("model", "engine.model"), ("server", "vllm_server")):
            if ours in raw:
                raise LaunchError(f"{where}: {ours!r} belongs to our format (engine as a name); with engine as a "
                                  f"mapping use {instead}")
        body = {k: v for k, v in raw.items() if k not in _EXTRAS}
        if d.datagen_engine:
            body["engine"] = {**body["engine"], "type": d.datagen_engine}
        return normalize(body, TOP, where), extras, {}
    for key in raw:
        if key not in _OUR_KEYS:
            raise unknown_key(str(key), _OUR_KEYS, where)
    server = raw.get("server") or {}
    if not isinstance(server, dict):
        raise LaunchError(f"{where}: server must be a mapping (command, gpus, port, health_timeout, time_limit)")
    for key in server:
        if key not in _SERVER_KEYS:
            raise unknown_key(str(key), _SERVER_KEYS, where, "server.")
    server = {k: v for k, v in server.items() if v is not None}
    check_ours(server, where, "server.")
    engine = d.datagen_engine or raw.get("engine")
    if not engine:
        raise LaunchError(f"{where}: no engine; add engine: TYPE (one of {', '.join(ENGINES)}) or pass "
                          "--datagen_engine")
    model = raw.get("model")
    body = {"engine": {"type": str(engine), "model": None if model is None else str(model)},
            "backend": {"type": str(raw.get("backend") or "vllm")}}
    return normalize(body, TOP, where), extras, server


def load_config(d: DatagenOptions, ctx: Context, environ: Mapping[str, str]) -> DatagenConfig:
    """Read the datagen config, apply explicit flags, and check every input before anything is written."""
    _check_options(d, ctx.workdir)
    raw, where = _read(d, environ)
    config, extras, our_server = _parse(raw, where, d)
    engine = config["engine"]
    engine["type"] = engine["type"].lower()
    if d.datagen_model or (not engine["model"] and d.trace_model):
        engine["model"] = d.datagen_model or d.trace_model
    trace = copy.deepcopy(config)
    if d.trace_engine:
        trace["engine"]["type"] = d.trace_engine
    if d.trace_backend:
        trace["backend"]["type"] = d.trace_backend
    if d.trace_model and trace["engine"]["type"] in API_KEY_ENV:
        trace["engine"]["model"] = d.trace_model
    for stage in (config, trace):
        _check_types(stage, where)
        _check_secrets(stage, where, ctx.secrets_path)
    stages = [c for c, on in ((config, d.enable_task_gen), (trace, d.enable_trace_gen)) if on]
    server = _server(config, next((c for c in stages if needs_server(c)), None), our_server, where, ctx)
    return DatagenConfig(
        engine_config=config, trace_engine_config=trace, server=server,
        trace_model=_trace_model(d, trace, server, ctx.workdir),
        chunk_size=d.chunk_size if d.chunk_size is not None else int(extras.get("chunk_size", 100)),
        chunk_parallelism=_parallelism(d, extras, config, where),
        cpus_per_task=int(extras.get("cpus_per_task", 1)),
        wait_timeout=d.server_wait_timeout if d.server_wait_timeout is not None else _wait_timeout(config),
        endpoint_file=_endpoint_override(config, ctx.workdir),
    )


def _check_types(config: dict[str, Any], where: str) -> None:
    if config["engine"]["type"] not in ENGINES:
        raise LaunchError(f"{where}: unknown engine {config['engine']['type']!r}; use one of {', '.join(ENGINES)}")
    if config["backend"]["type"] not in BACKENDS:
        raise LaunchError(f"{where}: unknown backend {config['backend']['type']!r}; use one of {', '.join(BACKENDS)}")


def _check_secrets(config: dict[str, Any], where: str, secrets: Path | None) -> None:
    """Keys never go into a config (it is copied into the experiment); the config names the variable."""
    engine = config["engine"]
    for provider in ("openai", "anthropic", "vllm_local"):
        if (engine[provider] or {}).get("api_key"):
            raise LaunchError(f"{where}: engine.{provider}.api_key holds a key; put it in your secrets file as "
                              f"NAME=... and write api_key_env: NAME instead")
    check_config(where, config)
    if engine["type"] in API_KEY_ENV and secrets is None:
        name = (engine[engine["type"]] or {}).get("api_key_env") or API_KEY_ENV[engine["type"]]
        raise LaunchError(f"engine {engine['type']} reads {name} in the jobs, which get it only from your secrets "
                          "file; set DC_AGENT_SECRET_ENV or --secrets_env")


def _check_options(d: DatagenOptions, workdir: Path) -> None:
    if not (d.enable_task_gen or d.enable_trace_gen):
        raise LaunchError("both --no-enable_task_gen and --no-enable_trace_gen: nothing to do")
    if not d.enable_trace_gen:
        for f in fields(DatagenOptions):
            if f.name.startswith(("trace_", "chunk_", "num_chunks")) and getattr(d, f.name) != f.default:
                raise LaunchError(f"--{f.name} is a trace option but trace generation is off; add --enable_trace_gen "
                                  f"(or drop --{f.name})")
    if d.enable_task_gen and not d.datagen_script:
        raise LaunchError("task generation needs --datagen_script (your generator, called with --stage tasks)")
    for flag, number in (("--server_wait_timeout", d.server_wait_timeout), ("--trace_n_concurrent", d.trace_n_concurrent),
                         ("--trace_agent_timeout_sec", d.trace_agent_timeout_sec),
                         ("--trace_verifier_timeout_sec", d.trace_verifier_timeout_sec)):
        if number is not None and not 0 < number < math.inf:
            raise LaunchError(f"{flag} must be above 0 (got {number})")
    try:
        shlex.split(d.datagen_extra_args or "")
    except ValueError as exc:
        raise LaunchError(f"--datagen_extra_args is not valid shell quoting ({exc}); write it as one string, e.g. "
                          "\"--num-tasks 10\"") from None
    for flag, repo in (("--datagen_target_repo", d.datagen_target_repo), ("--trace_target_repo", d.trace_target_repo)):
        if repo:
            check_repo_id(repo, flag)
    for flag, value in (("--datagen_script", d.datagen_script), ("--trace_script", d.trace_script),
                        ("--trace_harbor_config", d.trace_harbor_config)):
        if value and not os.path.isfile(workdir / value):
            raise LaunchError(f"{flag} {value}: no such file (relative paths start at {workdir})")
    if d.enable_trace_gen:
        if not (d.trace_script or d.datagen_script):
            raise LaunchError("trace generation needs --trace_script (or --datagen_script)")
        if not d.trace_target_repo:
            raise LaunchError("trace generation needs --trace_target_repo org/name (chunks go to org/name-chunk000, ...)")
        if d.trace_input_path and not os.path.isdir(workdir / d.trace_input_path):
            raise LaunchError(f"--trace_input_path {d.trace_input_path} does not exist or is not a directory")
        if not d.enable_task_gen and not d.trace_input_path:
            raise LaunchError("trace generation without task generation needs --trace_input_path (the tasks)")
    if d.trace_agent_kwargs is not None:
        agent_kwargs(d)


def agent_kwargs(d: DatagenOptions) -> dict[str, Any]:
    """--trace_agent_kwargs as a JSON object (strict: no duplicate keys, NaN or Infinity; no secret in it)."""
    try:
        kwargs = load_json(d.trace_agent_kwargs or "{}")
        if not isinstance(kwargs, dict):
            raise ValueError("not an object")
    except ValueError as exc:
        raise LaunchError(f"--trace_agent_kwargs is not a JSON object ({exc}); write e.g. '{{\"temperature\": 0.7}}'") from None
    check_config("--trace_agent_kwargs", kwargs)
    return kwargs


def needs_server(config: dict[str, Any]) -> bool:
    """vllm_local served by this launch: not with backend none, nor when the config names an existing endpoint."""
    local = config["engine"]["vllm_local"] or {}
    return (config["engine"]["type"] == "vllm_local" and config["backend"]["type"] != "none"
            and not (local.get("endpoint_json") or local.get("base_url")))


def _server(config: dict[str, Any], stage: dict[str, Any] | None, ours: dict[str, Any], where: str,
            ctx: Context) -> ServerSpec | None:
    """The server job serving `stage` (None: no stage needs one): vllm_server's `vllm serve` line, else our
    server.command or the profile's inference_server_command."""
    if stage is None:
        return None
    profile, backend, vllm = ctx.profile, config["backend"], config["vllm_server"]
    sizes = [(vllm or backend)[k] for k in ("tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size")]
    gpus = int(ours.get("gpus", sizes[0] * sizes[1] * sizes[2]))
    if vllm:
        if vllm["num_replicas"] != 1:
            raise LaunchError(f"{where}: vllm_server.num_replicas {vllm['num_replicas']}: one vLLM server per launch "
                              f"here; use data_parallel_size {vllm['num_replicas']} instead (one endpoint)")
        command, env = vllm_serve(vllm, where)
        model, time_limit = vllm["custom_model_name"] or vllm["model_path"], vllm["time_limit"]
    else:
        model = stage["engine"]["model"]
        template = ours.get("command") or profile.inference_server_command
        if not template:
            raise LaunchError(f"{where}: engine vllm_local needs a server: vllm_server (upstream format) or "
                              f"server.command, as the {profile.name} profile has no inference_server_command")
        if not model:
            raise LaunchError("engine vllm_local needs the model to serve: pass --datagen_model NAME (or set it in "
                              "the datagen config)")
        values = {"model": model, "port": "{port}", "gpus": str(gpus), "hpc_root": str(ROOT)}
        command = fill(template, values, f"{where}: the server command")
        env, time_limit = {}, ours.get("time_limit")
    if gpus > profile.gpus_per_node:
        raise LaunchError(f"{where}: the server needs {gpus} GPUs but a node of {profile.name} has "
                          f"{profile.gpus_per_node}; lower the parallel sizes (multi-node serving is not supported)")
    env.update({f"RAY_CGRAPH_{k[len('ray_cgraph_'):]}": f"{backend[k]:g}" for k in backend
                if k.startswith("ray_cgraph_") and backend[k] is not None})
    limit = format_time(parse_time(str(time_limit), f"{where}: time_limit")) if time_limit else None
    return ServerSpec(command=command, model_name=str(model), gpus=gpus,
                      port=int(ours.get("port", backend["api_port"])),
                      health_timeout=int(ours.get("health_timeout", 1800)), time_limit=limit, env=env)


def _trace_model(d: DatagenOptions, trace: dict[str, Any], server: ServerSpec | None, workdir: Path) -> str | None:
    """--trace-model: the flag, else the Harbor YAML's first agent, else the engine's model (API engines as
    provider/model), else the served model."""
    if d.trace_model:
        return d.trace_model
    if d.trace_harbor_config:
        harbor = read_yaml(workdir / d.trace_harbor_config, "Harbor job config", "check --trace_harbor_config",
                           empty={})
        agents = harbor.get("agents") or [{}]
        if not isinstance(agents, list) or not isinstance(agents[0], dict):
            raise LaunchError(f"--trace_harbor_config {d.trace_harbor_config}: agents must be a list of mappings "
                              "(a Harbor job YAML)")
        harbor_model = agents[0].get("model_name")
        if harbor_model and harbor_model != _PLACEHOLDER_MODEL:
            return str(harbor_model)
    engine = trace["engine"]
    if engine["type"] in _PROVIDER and engine["model"]:
        prefix = _PROVIDER[engine["type"]] + "/"
        return engine["model"] if engine["model"].startswith(prefix) else prefix + engine["model"]
    if engine["type"] == "vllm_local":
        vllm = trace["vllm_server"]
        return vllm["model_path"] if vllm else engine["model"] or (server.model_name if server else None)
    return None


def _parallelism(d: DatagenOptions, extras: dict[str, Any], config: dict[str, Any], where: str) -> int:
    if "chunk_parallelism" in extras and config["chunk_array_max"] is not None:
        raise LaunchError(f"{where}: chunk_parallelism and chunk_array_max are the same setting; keep one")
    if d.chunk_parallelism is not None:
        value = d.chunk_parallelism
    else:
        value = int(extras.get("chunk_parallelism", config["chunk_array_max"] or 4))
    if value < 1:
        raise LaunchError(f"--chunk_parallelism must be at least 1 (got {value})")
    return value


def _wait_timeout(config: dict[str, Any]) -> int:
    """Upstream's endpoint health check, attempts x delay (its defaults 20 x 30 s fill a missing one), else 1800 s."""
    backend = config["backend"]
    attempts, delay = backend["healthcheck_max_attempts"], backend["healthcheck_retry_delay"]
    if attempts is None and delay is None:
        return 1800
    return (attempts if attempts is not None else 20) * (delay if delay is not None else 30)


def _endpoint_override(config: dict[str, Any], workdir: Path) -> str | None:
    path = (config["vllm_server"] or {}).get("endpoint_json_path") or config["backend"]["endpoint_json_path"]
    return str((workdir / Path(path).expanduser()).absolute()) if path else None
