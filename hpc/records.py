"""`record`: the dataclass decorator of hpc-launch, with shared methods instead of generated ones.

On Python 3.11, `dataclass` compiles every method it writes (__init__, __repr__, __eq__, __hash__, a frozen class's
__setattr__ and __delattr__) each time a module is imported: about 0.2 ms per method, 1 ms per frozen class, and a
dry run defines some thirty records. A record is a real dataclass (`fields`, `replace` and `asdict` work on it) whose
methods are the functions below, written once: they read the class's fields, so they behave like the generated ones
(positional or keyword arguments, keyword-only fields, defaults and default factories, value equality over `compare`
fields, a frozen class refuses assignment). It is kept because the launch benchmark misses its target without it
(benchmarks/README.md). Where it would differ from dataclass it refuses loudly: every record says how it compares
(`eq=True`, value equality as dataclass; `eq=False`, identity, for records nothing compares), and a class with
`__post_init__` or an `InitVar` field, which the shared `__init__` does not handle, is a TypeError.
"""

from __future__ import annotations

from dataclasses import MISSING, FrozenInstanceError, Field, InitVar, dataclass, field, fields
from typing import Any, Callable, TypeVar, dataclass_transform

T = TypeVar("T")


class _Shape:
    """What the shared methods need to know of one record class, computed when it is defined."""

    __slots__ = ("name", "fields", "positional", "keywords", "compared", "hashed")

    def __init__(self, cls: type) -> None:
        all_fields: tuple[Field, ...] = fields(cls)
        self.name = cls.__name__
        self.fields = all_fields
        self.positional = tuple(f.name for f in all_fields if f.init and not f.kw_only)
        self.keywords = frozenset(f.name for f in all_fields if f.init)
        self.compared = tuple(f.name for f in all_fields if f.compare)
        self.hashed = tuple(f.name for f in all_fields if (f.compare if f.hash is None else f.hash))


@dataclass_transform(field_specifiers=(field,))
def record(cls: type[T] | None = None, /, *, eq: bool | None = None, frozen: bool = True) -> Any:
    """Make `cls` a record: frozen unless `frozen=False`; with `eq=True` compared by value (then hashable by value
    when frozen, unhashable when not, as dataclass does), with `eq=False` by identity. `eq` must be given."""
    if cls is not None or eq is None:
        raise TypeError("say how the record compares: @record(eq=True) for value equality (as @dataclass), "
                        "@record(eq=False) for identity")

    def wrap(cls: type[T]) -> type[T]:
        hints = cls.__dict__.get("__annotations__", {}).values()
        if "__post_init__" in cls.__dict__ or any(
                isinstance(h, InitVar) or h is InitVar or (isinstance(h, str) and "InitVar" in h) for h in hints):
            raise TypeError(f"{cls.__name__}: a record runs no __post_init__ and takes no InitVar; use @dataclass")
        cls = dataclass(init=False, repr=False, eq=False)(cls)
        cls.__record__ = _Shape(cls)  # type: ignore[attr-defined]
        setters: dict[str, Callable[..., Any] | None] = {"__init__": _init, "__repr__": _repr}
        if frozen:
            setters |= {"__setattr__": _refuse_set, "__delattr__": _refuse_delete}
        if eq:
            setters |= {"__eq__": _eq, "__hash__": _hash if frozen else None}
        for name, method in setters.items():
            if name not in cls.__dict__:
                setattr(cls, name, method)
        return cls

    return wrap


def _init(self: Any, *args: Any, **kwargs: Any) -> None:
    shape: _Shape = type(self).__record__
    if len(args) > len(shape.positional):
        raise TypeError(f"{shape.name}() takes {len(shape.positional)} positional arguments but {len(args)} were given")
    given = dict(zip(shape.positional, args))
    for name, value in kwargs.items():
        if name not in shape.keywords:
            raise TypeError(f"{shape.name}() got an unexpected keyword argument {name!r}")
        if name in given:
            raise TypeError(f"{shape.name}() got multiple values for argument {name!r}")
        given[name] = value
    for f in shape.fields:
        if f.name in given:
            value = given[f.name]
        elif f.default is not MISSING:
            value = f.default
        elif f.default_factory is not MISSING:
            value = f.default_factory()
        else:
            raise TypeError(f"{shape.name}() missing required argument: {f.name!r}")
        object.__setattr__(self, f.name, value)


def _repr(self: Any) -> str:
    shape: _Shape = type(self).__record__
    shown = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in shape.fields if f.repr)
    return f"{shape.name}({shown})"


def _eq(self: Any, other: object) -> bool:
    if type(other) is not type(self):
        return NotImplemented
    return all(getattr(self, name) == getattr(other, name) for name in type(self).__record__.compared)


def _hash(self: Any) -> int:
    return hash(tuple(getattr(self, name) for name in type(self).__record__.hashed))


def _refuse_set(self: Any, name: str, value: Any) -> None:
    raise FrozenInstanceError(f"cannot assign to field {name!r}")


def _refuse_delete(self: Any, name: str) -> None:
    raise FrozenInstanceError(f"cannot delete field {name!r}")
