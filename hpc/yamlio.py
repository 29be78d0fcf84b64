"""YAML in and out with PyYAML's safe loader and dumper, through libyaml when PyYAML was built with it.

libyaml parses and emits the same documents about ten times faster than PyYAML's pure-Python code, which a launch
would otherwise spend most of its planning time in. Loading is strict: a mapping with a key twice, a recursive
alias, aliases that expand past MAX_NODES nodes (a "billion laughs") and .nan/.inf (no setting takes them) are
refused as yaml.YAMLError.
"""

from __future__ import annotations

import math
from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, SequenceNode

_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
#: The most nodes a document may stand for once its aliases are expanded.
MAX_NODES = 1_000_000
_MERGE = "tag:yaml.org,2002:merge"


class _StrictLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """The safe loader, refusing duplicate keys."""

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict:
        seen: set[object] = set()
        for key_node, _ in node.value:
            if key_node.tag == _MERGE:
                continue  # merged keys may be overridden: that is what a merge is for
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:
                continue  # an unhashable key, which the safe constructor refuses
            if duplicate:
                raise ConstructorError("while constructing a mapping", node.start_mark,
                                       f"found duplicate key {key!r}", key_node.start_mark)
        return super().construct_mapping(node, deep)


def _finite_float(loader: _StrictLoader, node: Node) -> float:
    value = loader.construct_yaml_float(node)
    if not math.isfinite(value):
        raise ConstructorError(None, None, f"found {node.value}, which is not a usable number", node.start_mark)
    return value


_StrictLoader.add_constructor("tag:yaml.org,2002:float", _finite_float)


def _children(node: Node) -> list[Node]:
    if isinstance(node, MappingNode):
        return [n for pair in node.value for n in pair]
    return list(node.value) if isinstance(node, SequenceNode) else []


def _check_expansion(root: Node) -> None:
    """Refuse a recursive alias, or more than MAX_NODES nodes once aliases are expanded (without expanding them)."""
    sizes: dict[int, int] = {}
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if children_done:
            sizes[id(node)] = 1 + sum(sizes[id(c)] for c in _children(node))
            if sizes[id(node)] > MAX_NODES:
                raise ConstructorError(None, None, f"aliases expand to more than {MAX_NODES} nodes", node.start_mark)
            continue
        if id(node) in sizes:
            continue
        sizes[id(node)] = -1  # in progress
        stack.append((node, True))
        for child in _children(node):
            if sizes.get(id(child)) == -1:
                raise ConstructorError(None, None, "found a recursive alias", child.start_mark)
            if id(child) not in sizes:
                stack.append((child, False))


def load(text: str) -> Any:
    """yaml.safe_load, faster and strict (see the module docstring); raises yaml.YAMLError."""
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if "&" in text:  # no anchor, no alias
            _check_expansion(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def describe(exc: yaml.YAMLError) -> str:
    """A YAML error in one line: the problem and where it is."""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    mark = getattr(exc, "problem_mark", None)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else problem


def dump(data: Any) -> str:
    """yaml.safe_dump(data, sort_keys=False), faster: keys in their order, block style."""
    return yaml.dump(data, Dumper=_DUMPER, sort_keys=False)
