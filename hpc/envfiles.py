"""The job environment: dotenv starter packs (python-dotenv) and the secrets file, which is never read.

A dotenv pack's values are written into job scripts, so it must hold no secret: a key that looks like one
(secret_name), a value that interpolates such a variable from the login shell (`HF=${HF_TOKEN}`), or a value that
carries one (a URL with a password, a PEM key) is refused with the way out: your own secrets file, which jobs source.
"""

from __future__ import annotations

import io
import os
import re
import stat
from pathlib import Path

from hpc import cache, data_dir
from hpc.errors import LaunchError
from hpc.readers import read_text
from hpc.secret_rule import FIX, SECRETS_ENV, check_config, secret_name

DOTENV_DIR = data_dir("dotenv")

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_INTERPOLATION = re.compile(r"\$\{([^}:]*)(?::-[^}]*)?\}")  # python-dotenv's ${NAME} and ${NAME:-default}


def resolve_dotenv_path(name: str, profile_source: Path) -> Path:
    """A profile's dotenv: next to a user's own profile first, else in dotenv/ (absolute paths as given)."""
    for path in (profile_source.parent / name, DOTENV_DIR / name):
        if path.exists():
            return path.resolve()
    raise LaunchError(f"dotenv file {name!r} not found (looked in {DOTENV_DIR}); create it or fix the profile")


def _check_raw(path: Path, key: str | None, raw: str | None, line: int) -> str:
    """The key of one binding as written (before interpolation), refused when it can bring a secret in."""
    if key is None:
        raise LaunchError(f"dotenv file {path}: line {line} is not KEY=VALUE; fix or remove it")
    if not _IDENTIFIER.fullmatch(key):
        raise LaunchError(f"dotenv file {path}: {key!r} is not a valid environment variable name")
    if secret_name(key):
        raise LaunchError(f"dotenv file {path}: {key} looks like a secret; {FIX}")
    if raw is None:
        raise LaunchError(f"dotenv file {path}: {key} has no value; write {key}=VALUE")
    for name in _INTERPOLATION.findall(raw):
        if secret_name(name):
            raise LaunchError(f"dotenv file {path}: {key} interpolates ${{{name}}}, which looks like a secret: its "
                              f"value would be written into job scripts; jobs get secrets by sourcing your own secrets "
                              f"file (${SECRETS_ENV}), so drop the reference")
    return key


def read_dotenv(path: Path) -> dict[str, str]:
    """Read a starter pack with python-dotenv; ${VAR} and ${VAR:-default} see the login environment.

    What a pack holds is kept in hpc-launch's cache (hpc.cache) with what it was read from (its text, the login
    values it interpolates, this checker and python-dotenv), so an unchanged pack is not parsed again: importing
    python-dotenv, and the logging it imports, is a tenth of a launch."""
    from urllib.parse import quote

    text = read_text(path, "dotenv file", "pass --dotenv FILE or fix the profile's dotenv")
    folder = cache.directory("dotenv")
    entry = folder / f"{quote(str(path), safe='')}.json" if folder else None
    source = _source(text)
    cached = cache.read_json(entry) if entry else None
    if isinstance(cached, dict) and cached.get("source") == source and _bindings(cached.get("values")):
        values = cached["values"]
    else:
        values = _parse(path, text)
        if entry:
            cache.write_json(entry, {"source": source, "values": values})
    check_config(f"dotenv file {path}", values)  # as jobs will see them (interpolated), against today's login secrets
    return values


def _bindings(values: object) -> bool:
    """Whether a cached pack is what _parse returns: names that are identifiers, text values."""
    return isinstance(values, dict) and all(isinstance(k, str) and _IDENTIFIER.fullmatch(k) and isinstance(v, str)
                                            for k, v in values.items())


def _source(text: str) -> list:
    """What a pack's values follow from, as JSON holds it."""
    import importlib.util

    spec = importlib.util.find_spec("dotenv")
    code = [Path(__file__), Path(spec.origin).with_name("main.py") if spec and spec.origin else None]
    stamps = [[st.st_mtime_ns, st.st_size] for st in (p.stat() for p in code if p and p.exists())]
    interpolated = {name: os.environ.get(name) for name in sorted(set(_INTERPOLATION.findall(text)))}
    return [text, interpolated, stamps]


def _parse(path: Path, text: str) -> dict[str, str]:
    from dotenv import dotenv_values
    from dotenv.parser import parse_stream

    for binding in parse_stream(io.StringIO(text)):
        if binding.key is not None or binding.error:
            _check_raw(path, binding.key, binding.value, binding.original.line)
    values = dotenv_values(stream=io.StringIO(text), interpolate=True)
    return {key: value for key, value in values.items() if value is not None}


def check_secrets_file(path_text: str) -> Path:
    """The secrets file must exist and be private; only its path ever reaches a job script."""
    path = Path(path_text).expanduser()
    if not path.is_absolute():
        path = Path.cwd() / path
    try:
        info = path.stat()
    except OSError:
        raise LaunchError(f"secrets file {path} does not exist; fix {SECRETS_ENV} or --secrets_env") from None
    if not stat.S_ISREG(info.st_mode):
        raise LaunchError(f"secrets file {path} is not a regular file; point {SECRETS_ENV} at your .env file")
    if not info.st_mode & stat.S_IRUSR or not os.access(path, os.R_OK):
        raise LaunchError(f"secrets file {path} is not readable by you (mode {stat.filemode(info.st_mode)}); run: "
                          f"chmod 600 {path}")
    if info.st_mode & 0o077:
        raise LaunchError(
            f"secrets file {path} is accessible by others (mode {stat.filemode(info.st_mode)}); run: chmod 600 {path}"
        )
    return path
