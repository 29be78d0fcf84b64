"""Refuse a bad LLaMA-Factory train config on the login node, before it queues.

The keys and types come from LLaMA-Factory's own argument dataclasses (the `_TRAIN_ARGS` its train entry hands to
HfArgumentParser), read from the installed sources with `ast`: importing llamafactory would import transformers and
torch, which takes seconds. Only unambiguous mistakes are refused; what cannot be classified is accepted.

Reading the sources takes 0.1-0.3 s, so what every key accepts is kept in hpc-launch's cache (hpc.cache) together with
the file (path, mtime, size) of every module it was read from and of this checker; an entry is used only while each
of those module names still resolves to the same, unchanged file.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import math
import os
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import field
from pathlib import Path

from hpc import cache
from hpc.errors import LaunchError
from hpc.records import record

#: A union member of an annotation: "none", "bool", "int", "float", "str", "dict", "any", or a tuple of choices.
Kind = str | tuple[object, ...]
#: A field's annotation and the module whose names it uses.
Field = tuple[str, ast.expr]

#: The cache file (in hpc.cache's lf_check/) of the kinds of every train key.
CACHE_FILE = "fields.json"

_SIMPLE = {"bool": "bool", "int": "int", "float": "float", "str": "str", "dict": "dict", "Dict": "dict"}
_DESCRIBE = {"bool": "true or false", "int": "a whole number", "float": "a number", "str": "a string",
             "dict": "a mapping"}


class _SchemaError(Exception):
    """LLaMA-Factory's sources are not shaped as expected."""


@record(eq=True, frozen=False)
class _Scope:
    """A module's top-level bindings: classes, `from` imports (name -> module, name) and `A = B` aliases."""

    stamp: list[object]  # its file's path, mtime and size, taken before it was read (see _file_stamp)
    classes: dict[str, ast.ClassDef] = field(default_factory=dict)
    imports: dict[str, tuple[str, str]] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)


def _package(top: str) -> importlib.machinery.ModuleSpec:
    """The spec of a top-level package, found without importing it."""
    spec = importlib.util.find_spec(top)
    if spec is None:
        raise _SchemaError(f"{top} is not installed")
    return spec


def _locate(module: str, package: importlib.machinery.ModuleSpec | None = None) -> tuple[Path, bool]:
    """The source file of a module and whether it is a package, found without importing anything (`package`: the
    spec of its top-level package, when known)."""
    top, *rest = module.split(".")
    spec = package or _package(top)
    if not rest:
        if spec.origin is None or not spec.origin.endswith(".py"):
            raise _SchemaError(f"{top} has no Python source")
        return Path(spec.origin), spec.submodule_search_locations is not None
    for location in spec.submodule_search_locations or ():
        base = Path(location, *rest)
        if (base / "__init__.py").is_file():
            return base / "__init__.py", True
        if base.with_suffix(".py").is_file():
            return base.with_suffix(".py"), False
    raise _SchemaError(f"no source for {module}")


def _top_level(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Module-level statements, including those under `if` and `try` (later ones win, as at run time)."""
    for stmt in body:
        if isinstance(stmt, ast.If):
            yield from _top_level(stmt.body + stmt.orelse)
        elif isinstance(stmt, ast.Try):
            yield from _top_level(stmt.body + [s for h in stmt.handlers for s in h.body] + stmt.orelse)
        else:
            yield stmt


#: Module name -> its scope: each source is read once per process, and these are the sources a cache entry lists.
_SCOPES: dict[str, _Scope] = {}


def _scope(module: str) -> _Scope:
    if module in _SCOPES:
        return _SCOPES[module]
    path, is_package = _locate(module)
    package = module if is_package else module.rpartition(".")[0]
    scope = _Scope(_file_stamp(path))
    for stmt in _top_level(ast.parse(path.read_text(encoding="utf-8")).body):
        if isinstance(stmt, ast.ClassDef):
            scope.classes[stmt.name] = stmt
        elif isinstance(stmt, ast.ImportFrom):
            parts = package.split(".")[: len(package.split(".")) + 1 - stmt.level] if stmt.level else []
            source = ".".join([*parts, *([stmt.module] if stmt.module else [])])
            scope.imports.update({a.asname or a.name: (source, a.name) for a in stmt.names})
        elif isinstance(stmt, ast.Assign) and isinstance(stmt.value, ast.Name):
            scope.aliases.update({t.id: stmt.value.id for t in stmt.targets if isinstance(t, ast.Name)})
    _SCOPES[module] = scope
    return scope


def _find_class(module: str, name: str) -> tuple[str, ast.ClassDef]:
    """The module defining the class a name in `module` stands for, following imports and aliases."""
    scope = _scope(module)
    if name in scope.classes:
        return module, scope.classes[name]
    if name in scope.aliases:
        return _find_class(module, scope.aliases[name])
    if name in scope.imports:
        return _find_class(*scope.imports[name])
    raise _SchemaError(f"cannot find {name} in {module}")


def _is_dataclass(cls: ast.ClassDef) -> bool:
    return any(ast.unparse(d.func if isinstance(d, ast.Call) else d).endswith("dataclass") for d in cls.decorator_list)


def _fields(module: str, cls: ast.ClassDef) -> dict[str, Field | None]:
    """Dataclass fields of a class and its bases in dataclass order; None marks a field with init=False."""
    fields: dict[str, Field | None] = {}
    for base in reversed(cls.bases):
        if not isinstance(base, ast.Name):
            raise _SchemaError(f"base {ast.unparse(base)} of {cls.name}")
        if base.id != "object":
            fields.update(_fields(*_find_class(module, base.id)))
    if _is_dataclass(cls):
        for stmt in cls.body:
            if not isinstance(stmt, ast.AnnAssign) or not isinstance(stmt.target, ast.Name):
                continue
            if ast.unparse(stmt.annotation).split("[")[0].split(".")[-1] in ("ClassVar", "InitVar", "KW_ONLY"):
                continue
            call = stmt.value
            no_init = isinstance(call, ast.Call) and any(
                k.arg == "init" and isinstance(k.value, ast.Constant) and k.value.value is False for k in call.keywords)
            fields[stmt.target.id] = None if no_init else (module, stmt.annotation)
    return fields


@functools.cache
def _schema() -> dict[str, Field] | str:
    """LLaMA-Factory's train keys and their fields, or why its sources could not be read."""
    try:
        parser = "llamafactory.hparams.parser"
        body = ast.parse(_locate(parser)[0].read_text(encoding="utf-8")).body
        lists = [s.value for s in _top_level(body) if isinstance(s, ast.Assign)
                 and any(isinstance(t, ast.Name) and t.id == "_TRAIN_ARGS" for t in s.targets)]
        if not lists or not isinstance(lists[-1], ast.List) or not lists[-1].elts:
            raise _SchemaError(f"no _TRAIN_ARGS list in {parser}")
        fields: dict[str, Field] = {}
        for name in lists[-1].elts:
            if not isinstance(name, ast.Name):
                raise _SchemaError(f"unexpected _TRAIN_ARGS entry {ast.unparse(name)}")
            fields.update({k: v for k, v in _fields(*_find_class(parser, name.id)).items() if v is not None})
        return fields
    except Exception as exc:  # any surprise in the sources: say so rather than refuse a launch that may be valid
        return f"{type(exc).__name__}: {exc}"


def _enum_values(module: str, name: str) -> tuple[object, ...] | None:
    """The values of a simple string enum (only `NAME = "value"` members), else None."""
    try:
        _, cls = _find_class(module, name)
    except Exception:  # not found: not checked
        return None
    body = cls.body[1:] if cls.body and isinstance(cls.body[0], ast.Expr) else cls.body  # skip a docstring
    if not body or not any(ast.unparse(b).endswith("Enum") for b in cls.bases):
        return None
    values = tuple(s.value.value for s in body if isinstance(s, ast.Assign) and isinstance(s.value, ast.Constant))
    return values if len(values) == len(body) and all(isinstance(v, str) for v in values) else None


def _members(node: ast.expr) -> list[ast.expr]:
    """The members of a union annotation (`A | B`, Optional[A], Union[A, B]), forward references parsed."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        node = ast.parse(node.value, mode="eval").body
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _members(node.left) + _members(node.right)
    head = ast.unparse(node.value).split(".")[-1] if isinstance(node, ast.Subscript) else ""
    if isinstance(node, ast.Subscript) and head in ("Optional", "Union"):
        args = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        return [m for a in args for m in _members(a)] + [ast.Constant(None)] * (head == "Optional")
    return [node]


def _kind(module: str, node: ast.expr) -> Kind:
    if isinstance(node, ast.Constant) and node.value is None:
        return "none"
    if isinstance(node, ast.Subscript):
        head = ast.unparse(node.value).split(".")[-1]
        args = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        choices = tuple(a.value for a in args if isinstance(a, ast.Constant))
        if head == "Literal" and len(choices) == len(args):
            return choices
        return "dict" if head in ("dict", "Dict") else "any"
    if isinstance(node, ast.Name):
        return _SIMPLE.get(node.id) or _enum_values(module, node.id) or "any"
    return "any"


@functools.cache
def _kinds(module: str, annotation: ast.expr) -> tuple[Kind, ...]:
    """What an annotation accepts; ("any",) if it cannot be read. In `SomeEnum | str` the str only admits the enum's
    values (transformers converts it with SomeEnum(value) and refuses others), so it is dropped."""
    try:
        nodes = _members(annotation)
        kinds = [_kind(module, node) for node in nodes]
    except Exception:  # an annotation we cannot classify accepts anything
        return ("any",)
    if any(isinstance(n, ast.Name) and isinstance(k, tuple) for n, k in zip(nodes, kinds)):
        kinds = [k for k in kinds if k != "str"]
    return tuple(kinds)


def _number(value: object) -> float | None:
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(value) if isinstance(value, str) else None
    except ValueError:
        return None


def _accepts(kind: Kind, value: object) -> bool:
    if isinstance(kind, tuple):
        return any(type(choice) is type(value) and choice == value for choice in kind)
    number = _number(value)
    return {"any": True, "none": value is None, "bool": isinstance(value, bool), "dict": isinstance(value, dict),
            "str": not isinstance(value, dict),  # LF splits comma-separated strings and takes lists as they are
            "float": number is not None,
            "int": number is not None and math.isfinite(number) and number.is_integer()}[kind]


def _file_stamp(path: Path) -> list[object]:
    """A source file as a cache entry records it: path, mtime and size."""
    info = path.stat()
    return [str(path), info.st_mtime_ns, info.st_size]


def _checker() -> dict[str, object]:
    """What else a cache entry depends on: the Python and this checker's own source."""
    return {"python": sys.implementation.cache_tag, "checker": _file_stamp(Path(__file__))}


def _cached(entry: object) -> dict[str, list[object]] | None:
    """The kinds in a cache entry (as stored: choices as lists), if it was computed from the sources as they are now."""
    if not isinstance(entry, dict):
        return None
    try:
        files: dict[str, list[object]] = entry["files"]
        packages = {top: _package(top) for top in {module.partition(".")[0] for module in files}}
        if {k: entry[k] for k in ("python", "checker")} != _checker() or files != {
                module: _file_stamp(_locate(module, packages[module.partition(".")[0]])[0]) for module in files}:
            return None
        return entry["fields"]
    except Exception:  # a module that moved or vanished, an entry of another shape: computed again
        return None


def _as_kinds(stored: Iterable[object]) -> tuple[Kind, ...]:
    """A key's kinds as _kinds gives them, from those of _field_kinds (which may come from the cache)."""
    return tuple(tuple(k) if isinstance(k, list) else k for k in stored)


def _field_kinds() -> Mapping[str, Iterable[object]] | str:
    """What every train key accepts (see _kinds; _as_kinds reads it), or why LLaMA-Factory's sources could not be
    read; from the cache when its entry is current, else read from the sources and stored."""
    folder = cache.directory("lf_check")
    path = folder / CACHE_FILE if folder else None
    kinds = _cached(cache.read_json(path)) if path else None
    if kinds is not None:
        return kinds
    fields = _schema()
    if isinstance(fields, str):
        return fields
    kinds = {name: _kinds(*f) for name, f in fields.items()}
    if path:
        files = {module: scope.stamp for module, scope in _SCOPES.items()}
        cache.write_json(path, {**_checker(), "files": files, "fields": kinds})
    return kinds


def _type_error(key: str, value: object, members: tuple[Kind, ...]) -> str:
    import difflib  # only when refusing

    choices = [str(c) for m in members if isinstance(m, tuple) for c in m]
    close = difflib.get_close_matches(str(value), choices, n=1) if isinstance(value, str) else []
    if close:
        return f"{key}: {value!r} is not a valid choice; did you mean {close[0]!r}?"
    wanted = [_DESCRIBE[m] for m in dict.fromkeys(m for m in members if isinstance(m, str) and m in _DESCRIBE)]
    wanted += [f"one of {', '.join(choices)}"] if choices else []
    return f"{key} must be {' or '.join(wanted)}, not {value!r}"


def _lf_name() -> str:
    from importlib.metadata import PackageNotFoundError, version  # only when refusing: the import costs ~50 ms

    try:
        return f"LLaMA-Factory {version('llamafactory')}"
    except PackageNotFoundError:
        return "LLaMA-Factory"


def check_train_config(config: Mapping[str, object], source: str) -> str | None:
    """Check a resolved LLaMA-Factory config against LLaMA-Factory's own argument dataclasses.

    Returns None when checked OK, or a one-line note when LLaMA-Factory's sources are absent or unreadable (nothing
    was checked). Raises LaunchError naming `source`, the key and the fix for an unknown key or a clearly wrong type.
    Unknown keys pass when ALLOW_EXTRA_ARGS is on here, as LLaMA-Factory lets them pass when it is on in the job.
    """
    if importlib.util.find_spec("llamafactory") is None:
        return f"LLaMA-Factory is not installed here, so train config {source} was not checked before queueing"
    kinds = _field_kinds()
    if isinstance(kinds, str):
        return f"could not read LLaMA-Factory's train arguments ({kinds}); train config {source} was not checked"
    allow_extra = os.getenv("ALLOW_EXTRA_ARGS", "0").lower() in ("true", "y", "1")
    for key, value in config.items():
        name = str(key)
        if name not in kinds:
            if allow_extra:
                continue
            import difflib  # only when refusing

            close = difflib.get_close_matches(name, kinds, n=1)
            fix = f"did you mean {close[0]!r}?" if close else "remove it or fix its spelling"
            raise LaunchError(f"train config {source}: unknown key {name!r} (not a {_lf_name()} train argument); {fix}")
        members = _as_kinds(kinds[name])
        if value is not None and not any(_accepts(kind, value) for kind in members):
            raise LaunchError(f"train config {source}: {_type_error(name, value, members)}")
    return None
