"""taskpool.records: the slotted record classes that stand in for dataclasses (idle RSS)."""

from __future__ import annotations

import copy
import pickle
from collections import deque
from typing import ClassVar

import pytest

from taskpool.records import Factory, field_names, record, replace


@record
class Point:
    x: int
    y: int = 0
    tags: list = Factory(list)
    kind: ClassVar[str] = "point"  # not a field

    @property
    def norm(self) -> int:
        return abs(self.x) + abs(self.y)


@record(frozen=True)
class Frozen:
    name: str
    size: int = 1

    def __post_init__(self) -> None:
        if self.size < 0:
            raise ValueError("size must be >= 0")


@record(eq=False)
class Handle:
    key: str
    queue: deque = Factory(deque)


def test_fields_defaults_and_factories():
    p = Point(3)
    assert field_names(Point) == ("x", "y", "tags") == field_names(p)
    assert (p.x, p.y, p.tags, p.norm, Point.kind) == (3, 0, [], 3, "point")
    assert Point(1).tags is not Point(1).tags  # a fresh list each time
    assert Point(1, tags=["a"]).tags == ["a"]
    assert repr(Point(1, 2)) == "Point(x=1, y=2, tags=[])"
    with pytest.raises(TypeError):
        Point()  # x has no default
    with pytest.raises(TypeError):
        Point(1, 2, [], 4)  # one too many


def test_slots_only():
    p = Point(1)
    assert not hasattr(p, "__dict__")
    with pytest.raises(AttributeError):
        p.z = 1
    p.y = 5  # not frozen
    assert p.y == 5


def test_equality_and_hashing():
    assert Point(1, 2) == Point(1, 2) and Point(1, 2) != Point(2, 1)
    assert Point(1) != (1, 0, [])  # another class is never equal
    with pytest.raises(TypeError):
        hash(Point(1))  # mutable and compared by value: unhashable, as a dataclass
    assert hash(Frozen("a")) == hash(Frozen("a")) and {Frozen("a"), Frozen("a")} == {Frozen("a")}
    a, b = Handle("k"), Handle("k")
    assert a != b and a == a and len({a, b}) == 2  # eq=False: identity


def test_frozen_records_refuse_changes():
    f = Frozen("a")
    with pytest.raises(AttributeError, match="frozen"):
        f.name = "b"
    with pytest.raises(AttributeError, match="frozen"):
        del f.size
    assert (f.name, f.size) == ("a", 1)


def test_post_init_runs_after_the_fields_are_set():
    with pytest.raises(ValueError, match="size must be"):
        Frozen("a", -1)


def test_replace_copies_and_checks_names():
    f = Frozen("a", 2)
    assert replace(f, size=3) == Frozen("a", 3) and f.size == 2
    with pytest.raises(ValueError, match="size must be"):
        replace(f, size=-1)  # __post_init__ checks the copy too
    with pytest.raises(TypeError, match="no field.*colour"):
        replace(f, colour="red")


def test_pickle_and_copy_frozen_or_not():
    for obj in (Point(1, 2, ["t"]), Frozen("a", 2)):
        assert pickle.loads(pickle.dumps(obj)) == obj
        assert copy.copy(obj) == obj and copy.deepcopy(obj) == obj


def test_class_shape_errors_are_clear():
    with pytest.raises(TypeError, match="without a default follows"):

        @record
        class Bad:
            a: int = 1
            b: int

    with pytest.raises(TypeError, match="Factory"):

        @record
        class Shared:
            items: list = []  # noqa: RUF012 - the mistake under test

    with pytest.raises(TypeError, match="cannot extend another record"):

        @record
        class Point3(Point):
            z: int = 0

    with pytest.raises(TypeError, match="super"):

        @record
        class UsesSuper:
            a: int

            def describe(self) -> str:
                return super().__repr__()


@record(frozen=True)
class WithNotes:
    value: int
    notes: dict = Factory(dict, compare=False)


def test_a_field_left_out_of_comparison():
    a, b = WithNotes(1, {"from": "cli"}), WithNotes(1, {"from": "env"})
    assert a == b and hash(a) == hash(b) and repr(a) == "WithNotes(value=1)"
    assert WithNotes(1) != WithNotes(2)
    assert pickle.loads(pickle.dumps(a)).notes == {"from": "cli"}  # still copied
