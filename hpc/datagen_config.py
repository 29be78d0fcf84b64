"""Datagen settings: the datagen config YAML and the datagen options, validated together."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from hpc import ROOT
from hpc.errors import LaunchError
from hpc.options import DatagenOptions
from hpc.profiles import profile_dirs

ENGINES = ("openai", "anthropic", "vllm_local", "none")
CONFIG_DIRS = (ROOT / "examples" / "datagen",)
_SERVER_KEYS = {"command", "gpus", "health_timeout", "port", "time_limit"}
_KEYS = {"engine", "model", "backend", "server", "chunk_size", "chunk_parallelism", "cpus_per_task"}


@dataclass
class DatagenConfig:
    """The resolved datagen config (file values, overridden by explicit flags)."""

    engine: str
    model: str
    backend: str | None = None
    chunk_size: int = 100
    chunk_parallelism: int = 4
    cpus_per_task: int = 1
    server_command: list[str] = field(default_factory=list)
    server_gpus: int = 1
    server_port: int = 8000
    health_timeout: int = 1800
    server_time_limit: str | None = None


def resolve_config_path(name: str) -> Path:
    """A path as given, else NAME(.yaml) in the user's profile directories or examples/datagen/."""
    path = Path(name).expanduser()
    if path.is_file():
        return path
    for directory in (*profile_dirs()[:-1], *CONFIG_DIRS):
        for candidate in (directory / name, directory / f"{name}.yaml"):
            if candidate.is_file():
                return candidate
    raise LaunchError(f"datagen config {name!r} not found (a path, or a name in examples/datagen/); check --datagen_config")


def load_config(d: DatagenOptions, workdir: Path, default_server: list[str] | None) -> DatagenConfig:
    """Read --datagen_config, apply explicit flags, and check every input before anything is written."""
    if not d.datagen_config:
        raise LaunchError("--job_type datagen needs --datagen_config (a YAML naming the engine and model)")
    path = resolve_config_path(d.datagen_config)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise LaunchError(f"datagen config {path} is not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict) or (unknown := sorted(set(raw) - _KEYS)):
        raise LaunchError(f"{path}: unknown key {unknown[0]!r}; valid keys are {', '.join(sorted(_KEYS))}"
                          if isinstance(raw, dict) else f"{path}: a datagen config must be a YAML mapping")
    server = raw.get("server") or {}
    if unknown := sorted(set(server) - _SERVER_KEYS):
        raise LaunchError(f"{path}: unknown server key {unknown[0]!r}; valid keys are {', '.join(sorted(_SERVER_KEYS))}")
    config = DatagenConfig(
        engine=str(raw.get("engine", "")), model=str(raw.get("model", "")), backend=raw.get("backend"),
        chunk_size=d.chunk_size if d.chunk_size is not None else int(raw.get("chunk_size", 100)),
        chunk_parallelism=d.chunk_parallelism if d.chunk_parallelism is not None else int(raw.get("chunk_parallelism", 4)),
        cpus_per_task=int(raw.get("cpus_per_task", 1)),
        server_command=list(server.get("command") or default_server or []),
        server_gpus=int(server.get("gpus", 1)), server_port=int(server.get("port", 8000)),
        health_timeout=int(server.get("health_timeout", 1800)), server_time_limit=server.get("time_limit"),
    )
    _check(config, d, workdir, path)
    return config


def _check(config: DatagenConfig, d: DatagenOptions, workdir: Path, path: Path) -> None:
    if config.engine not in ENGINES:
        raise LaunchError(f"{path}: unknown engine {config.engine!r}; use one of {', '.join(ENGINES)}")
    if config.chunk_size < 1:
        raise LaunchError(f"--chunk_size must be at least 1 (got {config.chunk_size})")
    if config.chunk_parallelism < 1:
        raise LaunchError(f"--chunk_parallelism must be at least 1 (got {config.chunk_parallelism})")
    if config.engine == "vllm_local" and not config.server_command:
        raise LaunchError(f"{path}: engine vllm_local needs server.command (e.g. [vllm, serve, '{{model}}', --port, '{{port}}'])")
    if not (d.enable_task_gen or d.enable_trace_gen):
        raise LaunchError("both --no-enable_task_gen and --no-enable_trace_gen: nothing to do")
    if d.enable_task_gen and not d.datagen_script:
        raise LaunchError("task generation needs --datagen_script (your generator, called with --stage tasks)")
    for flag, value in (("--datagen_script", d.datagen_script), ("--trace_script", d.trace_script)):
        if value and not (workdir / value).is_file():
            raise LaunchError(f"{flag} {value} does not exist (relative paths start at {workdir})")
    if d.enable_trace_gen:
        if not (d.trace_script or d.datagen_script):
            raise LaunchError("trace generation needs --trace_script (or --datagen_script)")
        if not d.trace_target_repo:
            raise LaunchError("trace generation needs --trace_target_repo org/name (chunks go to org/name-chunk000, ...)")
        if d.trace_input_path and not (workdir / d.trace_input_path).is_dir():
            raise LaunchError(f"--trace_input_path {d.trace_input_path} does not exist or is not a directory")
        if not d.enable_task_gen and not d.trace_input_path:
            raise LaunchError("trace generation without task generation needs --trace_input_path (the tasks)")
    if d.trace_agent_kwargs is not None:
        try:
            if not isinstance(json.loads(d.trace_agent_kwargs), dict):
                raise ValueError("not an object")
        except ValueError as exc:
            raise LaunchError(f"--trace_agent_kwargs is not a JSON object ({exc}); write e.g. '{{\"temperature\": 0.7}}'") from None
