"""YAML in and out with PyYAML's safe loader and dumper, through libyaml when PyYAML was built with it.

libyaml parses and emits the same documents about ten times faster than PyYAML's pure-Python code, which a launch
would otherwise spend most of its planning time in. A document libyaml refuses is parsed again by PyYAML's own
parser, so errors read as they always did (with the offending line).
"""

from __future__ import annotations

from typing import Any

import yaml

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def load(text: str) -> Any:
    """yaml.safe_load, faster; raises yaml.YAMLError."""
    try:
        return yaml.load(text, Loader=_LOADER)  # noqa: S506 (a safe loader)
    except yaml.YAMLError:
        return yaml.safe_load(text)


def dump(data: Any) -> str:
    """yaml.safe_dump(data, sort_keys=False), faster: keys in their order, block style."""
    return yaml.dump(data, Dumper=_DUMPER, sort_keys=False)
