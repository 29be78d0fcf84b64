"""The job environment: dotenv starter packs (python-dotenv) and the secrets file, which is never read."""

from __future__ import annotations

import re
import stat
from pathlib import Path

from dotenv import dotenv_values

from hpc import data_dir
from hpc.errors import LaunchError

DOTENV_DIR = data_dir("dotenv")
SECRETS_ENV = "DC_AGENT_SECRET_ENV"

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SECRET_LOOKING = re.compile(r"(^|_)(TOKEN|SECRET|PASSWORD|PASSWD|(API|ACCESS|PRIVATE)_KEY)(_|$)", re.IGNORECASE)
_LOCATION = re.compile(r".*_(FILE|PATH|DIR|ENV)")  # names a place, not a value: DC_AGENT_SECRET_ENV is fine


def resolve_dotenv_path(name: str, profile_source: Path) -> Path:
    """A profile's dotenv: next to a user's own profile first, else in dotenv/ (absolute paths as given)."""
    for path in (profile_source.parent / name, DOTENV_DIR / name):
        if path.is_file():
            return path.resolve()
    raise LaunchError(f"dotenv file {name!r} not found (looked in {DOTENV_DIR}); create it or fix the profile")


def read_dotenv(path: Path) -> dict[str, str]:
    """Read a starter pack with python-dotenv; ${VAR} and ${VAR:-default} see the login environment."""
    values = dotenv_values(path, interpolate=True)
    result: dict[str, str] = {}
    for key, value in values.items():
        if not _IDENTIFIER.fullmatch(key):
            raise LaunchError(f"{path}: {key!r} is not a valid environment variable name")
        if _SECRET_LOOKING.search(key) and not _LOCATION.fullmatch(key):
            raise LaunchError(
                f"{path}: {key} looks like a secret; move it to your own secrets file (${SECRETS_ENV}), "
                "which jobs source at run time"
            )
        if value is None:
            raise LaunchError(f"{path}: {key} has no value; write {key}=VALUE")
        result[key] = value
    return result


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
    if info.st_mode & 0o077:
        raise LaunchError(
            f"secrets file {path} is accessible by others (mode {stat.filemode(info.st_mode)}); run: chmod 600 {path}"
        )
    return path
