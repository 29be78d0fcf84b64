"""One reader per input kind: every I/O, encoding, syntax and shape problem becomes one LaunchError line that names
the file and the fix.

Only regular files are read (a pipe, device or socket is refused without blocking on it), the size is checked before
anything is read (and reading stops one byte past the limit, should the file grow meanwhile), text must be UTF-8 (a
byte-order mark is allowed), YAML is strict (hpc.yamlio: no duplicate keys, no alias bombs, no NaN or infinity) and
JSON too (no duplicate keys, no NaN). `expect` is the top-level type the caller needs.
"""

from __future__ import annotations

import json
import os
import stat
import types
import typing
from pathlib import Path
from typing import Any

from hpc.errors import LaunchError

MIB = 1 << 20
#: Hand-written configs (train YAML, profiles, datagen configs, dotenv packs): a larger one is not a config.
CONFIG_LIMIT = 1 * MIB
#: JSON records (dataset_info.json, manifests, run summaries, deferred uploads).
RECORD_LIMIT = 16 * MIB

_SHAPES = {dict: "a mapping", list: "a list", str: "a string"}


def _type_word(value: object) -> str:
    if value is None:
        return "empty"
    if isinstance(value, bool):
        return "a boolean"
    return _SHAPES.get(type(value), f"a {type(value).__name__}")


def type_ok(value: object, hint: object) -> bool:
    """Whether a value read from YAML or JSON has the declared type `hint` (bool is not an int here)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(type_ok(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(type_ok(v, item) for v in value)
    if origin is dict:
        _, item = typing.get_args(hint)
        return isinstance(value, dict) and all(isinstance(k, str) and type_ok(v, item) for k, v in value.items())
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is object:
        return True
    return isinstance(value, hint)  # type: ignore[arg-type]


def type_name(hint: object) -> str:
    """A type hint as a reader would write it: str | None, list[str], int."""
    return str(hint).replace("typing.", "").replace("<class '", "").replace("'>", "")


def read_text(path: Path, what: str, fix: str, max_bytes: int = CONFIG_LIMIT) -> str:
    """The file's text; LaunchError "<what> <path> <problem>; <fix>" when it is missing, a directory, not a regular
    file (a pipe, device or socket: opened without blocking, never read), unreadable, larger than max_bytes or not
    UTF-8."""
    where = f"{what} {path}"
    try:
        _check_kind(os.stat(path), where, what, fix, max_bytes)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        try:
            _check_kind(os.fstat(fd), where, what, fix, max_bytes)  # the file opened is the file checked
            with os.fdopen(fd, "rb", closefd=False) as stream:
                data = stream.read(max_bytes + 1)
        finally:
            os.close(fd)
    except FileNotFoundError:
        raise LaunchError(f"{where} does not exist; {fix}") from None
    except ValueError:  # a NUL byte in the path
        raise LaunchError(f"{where} is not a usable path; {fix}") from None
    except OSError as exc:
        raise LaunchError(f"cannot read {where} ({exc.strerror or type(exc).__name__}); {fix}") from None
    if len(data) > max_bytes:
        raise LaunchError(f"{where} has more than the {max_bytes:,} bytes a {what} may have; is it the right file?")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LaunchError(f"{where} is not UTF-8 text (byte {exc.start} is not); save it as UTF-8") from None


def _check_kind(info: os.stat_result, where: str, what: str, fix: str, max_bytes: int) -> None:
    """Only a regular file of at most max_bytes is read."""
    mode = info.st_mode
    if stat.S_ISDIR(mode):
        raise LaunchError(f"{where} is a directory, not a file; {fix}")
    if not stat.S_ISREG(mode):
        kind = "a pipe" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
        raise LaunchError(f"{where} is {kind}, not a regular file; save it as a file and {fix}")
    if info.st_size > max_bytes:
        raise LaunchError(f"{where} has {info.st_size:,} bytes, more than the {max_bytes:,} a {what} may have; "
                          "is it the right file?")


def _shaped(data: Any, expect: type | None, where: str, shape: str | None) -> Any:
    if expect is not None and not isinstance(data, expect):
        raise LaunchError(f"{where} must be {shape or _SHAPES.get(expect, expect.__name__)}, not {_type_word(data)}; "
                          "fix the file")
    return data


def read_yaml(path: Path, what: str, fix: str, *, expect: type | None = dict, shape: str | None = None,
              empty: Any = None, max_bytes: int = CONFIG_LIMIT) -> Any:
    """A YAML file (hpc.yamlio's strict loader) whose top level is an `expect`; an empty document is `empty`."""
    import yaml

    from hpc import yamlio

    text = read_text(path, what, fix, max_bytes)
    try:
        data = yamlio.load(text)
    except yaml.YAMLError as exc:
        raise LaunchError(f"{what} {path} is not valid YAML ({yamlio.describe(exc)}); fix the YAML") from None
    except RecursionError:
        raise LaunchError(f"{what} {path} is nested too deeply to be a {what}; is it the right file?") from None
    return _shaped(empty if data is None else data, expect, f"{what} {path}", shape)


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def load_json(text: str) -> Any:
    """json.loads, strict: duplicate keys and NaN/Infinity raise ValueError."""
    return json.loads(text, object_pairs_hook=_object, parse_constant=_no_constant)


def read_json(path: Path, what: str, fix: str, *, expect: type | None = dict, shape: str | None = None,
              max_bytes: int = RECORD_LIMIT) -> Any:
    """A JSON file (strict, see load_json) whose top level is an `expect`."""
    text = read_text(path, what, fix, max_bytes)
    try:
        data = load_json(text)
    except ValueError as exc:  # JSONDecodeError included
        detail = f"{exc.msg} at line {exc.lineno}, column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else exc
        raise LaunchError(f"{what} {path} is not valid JSON ({detail}); {fix}") from None
    except RecursionError:
        raise LaunchError(f"{what} {path} is nested too deeply to be a {what}; {fix}") from None
    return _shaped(data, expect, f"{what} {path}", shape)
