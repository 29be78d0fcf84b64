"""Hugging Face repo ids (org/name[@revision]) as the launcher reads them from flags and configs."""

from __future__ import annotations

import os
import re
from pathlib import Path

from hpc.errors import LaunchError

#: org/name as the Hub takes it: word characters, '.' and '-', neither at either end of a part, no '..' or '--'.
REPO_ID = re.compile(r"(?!.*(\.\.|--))[A-Za-z0-9](?:[\w.-]*\w)?/\w(?:[\w.-]{0,94}\w)?")


def check_repo_id(repo: str, flag: str) -> None:
    """Refuse what is not an org/name Hub id (names `flag` in the message)."""
    if not REPO_ID.fullmatch(repo):
        raise LaunchError(f"{flag} {repo!r} is not a Hugging Face repo id; write it as org/name")


def hub_reference(value: object, workdir: Path) -> tuple[str, str | None] | None:
    """(repo_id, revision) when `value` names a Hub repo rather than an existing local path."""
    if not isinstance(value, str) or value.startswith(("/", "./", "../", "~")) or os.path.exists(workdir / value):
        return None
    repo, _, revision = value.partition("@")
    return (repo, revision or None) if REPO_ID.fullmatch(repo) else None
