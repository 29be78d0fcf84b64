"""Jinja2 rendering of sbatch scripts: StrictUndefined, every user value quoted."""

from __future__ import annotations

import functools
import re
import shlex
from typing import Any

import jinja2

from hpc import ROOT
from hpc.errors import LaunchError

TEMPLATE_DIR = ROOT / "sbatch_templates"

# What an #SBATCH value may hold: sbatch reads these lines itself, so no spaces, quotes or newlines.
_SBATCH_VALUE = re.compile(r"[A-Za-z0-9_.,:+=@%/~-]+")


def quote(value: object) -> str:
    """Shell-quote one value for the body of a script."""
    return shlex.quote(str(value))


def sbatch_value(value: object) -> str:
    """A value for an #SBATCH line, refused when sbatch could misread it."""
    text = str(value)
    if not _SBATCH_VALUE.fullmatch(text):
        raise LaunchError(
            f"{text!r} cannot go on an #SBATCH line (spaces, quotes and shell characters are not allowed there); "
            "choose a value or path without them"
        )
    return text


@functools.cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["q"] = quote
    env.filters["sbatch"] = sbatch_value
    return env


def render(template: str, **context: Any) -> str:
    """Render one template of sbatch_templates/ with the given context."""
    return environment().get_template(template).render(**context)
