"""hpc.records: a record behaves like the dataclass it replaces, with methods written once instead of generated."""

from dataclasses import FrozenInstanceError, asdict, field, fields, is_dataclass, replace

import pytest

from hpc.options import LaunchOptions
from hpc.records import record


@record(eq=False)
class Point:
    """A frozen record compared by identity."""

    x: int
    y: int = 0
    tags: list[str] = field(default_factory=list)
    note: str = field(default="", repr=False)


@record(eq=True)
class Key:
    """A frozen record compared and hashed by value."""

    name: str
    seen: int = field(default=0, compare=False)


@record(eq=True, frozen=False)
class Counter:
    """A mutable record compared by value."""

    count: int = 0
    log: list[str] = field(default_factory=list)


def test_arguments_bind_like_a_generated_init() -> None:
    assert (Point(1).x, Point(1).y, Point(1).tags) == (1, 0, [])
    p = Point(1, 2, ["a"], note="n")
    assert (p.x, p.y, p.tags, p.note) == (1, 2, ["a"], "n")
    assert Point(y=3, x=4).y == 3
    assert Point(1).tags is not Point(1).tags  # each instance gets its own default


@pytest.mark.parametrize("call, message", [
    (lambda: Point(), "Point() missing required argument: 'x'"),
    (lambda: Point(1, 2, [], "", 5), "Point() takes 4 positional arguments but 5 were given"),
    (lambda: Point(1, z=2), "Point() got an unexpected keyword argument 'z'"),
    (lambda: Point(1, x=2), "Point() got multiple values for argument 'x'"),
])
def test_wrong_arguments_raise_type_error(call, message: str) -> None:
    with pytest.raises(TypeError) as caught:
        call()
    assert str(caught.value) == message


def test_frozen_records_refuse_assignment_and_deletion() -> None:
    p = Point(1)
    with pytest.raises(FrozenInstanceError):
        p.x = 2  # type: ignore[misc]
    with pytest.raises(FrozenInstanceError):
        del p.x
    assert p.x == 1
    c = Counter()
    c.count += 1
    assert c.count == 1


def test_equality_is_by_identity_unless_asked() -> None:
    assert Point(1) != Point(1)
    p = Point(1)
    assert p == p and {p: "found"}[p] == "found"  # hashable by identity
    assert Key("a", seen=1) == Key("a", seen=2)  # compare=False fields do not count
    assert Key("a") != Key("b")
    assert Key("a") != ("a",)
    assert len({Key("a"), Key("a", 5), Key("b")}) == 2
    assert Counter(1, ["x"]) == Counter(1, ["x"]) != Counter(2)
    with pytest.raises(TypeError):
        hash(Counter())  # mutable and compared by value: unhashable, as with dataclass


def test_dataclass_functions_work() -> None:
    p = Point(1, 2, ["t"], note="hidden")
    assert is_dataclass(p)
    assert [f.name for f in fields(p)] == ["x", "y", "tags", "note"]
    assert asdict(p) == {"x": 1, "y": 2, "tags": ["t"], "note": "hidden"}
    q = replace(p, y=5)
    assert (q.x, q.y, q.tags, q.note) == (1, 5, ["t"], "hidden")
    assert repr(p) == "Point(x=1, y=2, tags=['t'])"  # repr=False fields are not shown


def test_keyword_only_fields_take_no_position() -> None:
    @record(eq=False)
    class Named:
        """A record whose second field is keyword-only."""

        x: int
        y: int = field(default=0, kw_only=True)

    assert Named(1, y=2).y == 2
    with pytest.raises(TypeError, match=r"^Named\(\) takes 1 positional arguments but 2 were given$"):
        Named(1, 2)
    with pytest.raises(TypeError, match=r"^LaunchOptions\(\) takes 0 positional arguments but 1 were given$"):
        LaunchOptions("train")  # every option is a keyword
    with pytest.raises(TypeError, match=r"^LaunchOptions\(\) got an unexpected keyword argument 'no_such'$"):
        LaunchOptions(no_such=1)
    assert LaunchOptions(job_type="run") == LaunchOptions(job_type="run") != LaunchOptions()


def test_methods_a_class_defines_are_kept() -> None:
    @record(eq=False)
    class Shown:
        """A record with its own repr."""

        value: int

        def __repr__(self) -> str:
            return f"<{self.value}>"

    assert repr(Shown(3)) == "<3>"


def test_what_a_record_would_do_differently_from_dataclass_is_refused() -> None:
    with pytest.raises(TypeError, match=r"say how the record compares: @record\(eq=True\)"):
        @record
        class Bare:
            x: int
    with pytest.raises(TypeError, match=r"say how the record compares"):
        record()
    with pytest.raises(TypeError, match="Late: a record runs no __post_init__ and takes no InitVar; use @dataclass"):
        @record(eq=True)
        class Late:
            x: int

            def __post_init__(self) -> None:
                pass
    from dataclasses import InitVar

    with pytest.raises(TypeError, match="Seed: a record runs no __post_init__ and takes no InitVar"):
        @record(eq=False)
        class Seed:
            x: int
            seed: InitVar[int] = 0
