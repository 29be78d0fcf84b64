"""hpc-launch's cache on the login node: $XDG_CACHE_HOME/hpc-launch, else ~/.cache/hpc-launch.

It holds what is slow to compute and cheap to check (LLaMA-Factory's argument kinds, compiled templates), each entry
with what it was computed from, so a stale entry is never used. Deleting it is always safe.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def directory(part: str) -> Path | None:
    """The cache's subdirectory `part`, created if needed; None where it cannot be (no home directory, read-only).

    The directory holding the cache root (the home directory, or $XDG_CACHE_HOME's parent) must exist already:
    the cache never creates a home directory."""
    try:
        xdg = os.environ.get("XDG_CACHE_HOME", "")  # a relative one counts as unset (XDG Base Directory spec)
        root = (Path(xdg) if os.path.isabs(xdg) else Path("~/.cache").expanduser()) / "hpc-launch"
        path = root / part
        if not root.parent.parent.is_dir():
            return None
        path.mkdir(parents=True, exist_ok=True)
    except (OSError, RuntimeError):  # RuntimeError: no home directory to expand ~ to
        return None
    return path if os.access(path, os.W_OK | os.X_OK) else None


def read_json(path: Path) -> object | None:
    """A cache file's JSON, or None when it is missing or unreadable (a cache miss, never an error)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_json(path: Path, data: object) -> None:
    """Replace a cache file atomically (concurrent launches may race: the last complete write wins); a failure to
    write only means the next launch computes it again."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(data, out, separators=(",", ":"))
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except (OSError, TypeError, ValueError):  # unwritable, or data JSON cannot hold
        pass
