"""Command templates with {name} placeholders (a profile's eval_command, a datagen server command): only plain names
that the caller provides, no attributes, indexes, conversions or format specs; `{{` and `}}` for a brace."""

from __future__ import annotations

import string
from collections.abc import Iterable, Mapping
from typing import NoReturn

from hpc.errors import LaunchError


def fill(template: Iterable[object], values: Mapping[str, object], what: str) -> list[str]:
    """Each argument of `template` with its placeholders replaced by `values`; LaunchError naming `what` for any
    other placeholder or a stray brace."""
    filled = []
    for arg in map(str, template):
        try:
            parts = list(string.Formatter().parse(arg))
        except ValueError as exc:  # a single { or }
            _refuse(what, str(exc), values)
        out = []
        for literal, name, spec, conversion in parts:
            out.append(literal)
            if name is None:
                continue
            if name not in values or spec or conversion:
                _refuse(what, "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "")
                        + "}", values)
            out.append(str(values[name]))
        filled.append("".join(out))
    return filled


def _refuse(what: str, detail: str, values: Mapping[str, object]) -> NoReturn:
    raise LaunchError(f"{what} has a bad placeholder ({detail}); use {', '.join('{' + k + '}' for k in values)}, "
                      "and {{ }} for a brace")
