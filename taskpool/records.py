"""Slotted record classes, made without ``dataclasses``.

``dataclasses`` imports ``inspect`` (and with it ``ast`` and ``dis``): 1.2 MiB of
RSS in the supervisor, and so again in every process it forks (issue 5's idle RSS). The package
used only this much of it: an ``__init__`` from the annotated fields and their defaults, slots,
``__repr__``, ``__eq__``, ``__post_init__``, frozen classes, ``replace`` and the list of field names.

Rules (checked when the class is made): annotations are the fields, in order (``ClassVar``
ones excepted); a field with a default comes after those without; a mutable default is given
as ``Factory(list)``; no zero-argument ``super()`` in a record's methods (the class is made anew).
"""

from __future__ import annotations

from collections.abc import Callable
from operator import attrgetter

TYPE_CHECKING = False  # typing stays unimported at run time (docs/performance.md, idle RSS)
if TYPE_CHECKING:
    from typing import Any, TypeVar

    R = TypeVar("R")


class Factory:
    """A field's default made afresh for each instance, as ``field(default_factory=...)``.
    ``compare=False``: the field is left out of ``==``, the hash and the repr."""

    __slots__ = ("make", "compare")

    def __init__(self, make: Callable[[], Any], compare: bool = True) -> None:
        self.make = make
        self.compare = compare


class _NotGiven:
    def __repr__(self) -> str:
        return "<made by its factory>"


_NOT_GIVEN = _NotGiven()


def record(cls: type[R] | None = None, /, *, frozen: bool = False, eq: bool = True) -> Any:
    """Decorate a class as a record: ``@record`` or ``@record(frozen=True)``.

    ``frozen``: assigning to a field raises AttributeError (the instance hashes by value).
    ``eq=False``: instances compare (and hash) by identity."""

    def build(cls: type) -> type:
        return _build(cls, frozen, eq)

    return build if cls is None else build(cls)


def field_names(cls_or_record: Any) -> tuple[str, ...]:
    """The fields of a record class (or of a record's class), in order."""
    return cls_or_record.__record_fields__


def replace(obj: R, **changes: Any) -> R:
    """A copy of ``obj`` with some fields changed; an unknown field raises TypeError."""
    cls = type(obj)
    names = cls.__record_fields__
    unknown = set(changes) - set(names)
    if unknown:
        raise TypeError(f"{cls.__name__} has no field(s) {', '.join(sorted(unknown))}")
    return cls(**{name: changes.get(name, getattr(obj, name)) for name in names})


def _fields(cls: type) -> tuple[str, ...]:
    annotations = cls.__dict__.get("__annotations__", {})
    return tuple(name for name, kind in annotations.items() if not str(kind).startswith(("ClassVar", "typing.ClassVar")))


def _build(cls: type, frozen: bool, eq: bool) -> type:
    names = _fields(cls)
    if any(hasattr(base, "__record_fields__") for base in cls.__mro__[1:]):
        raise TypeError(f"{cls.__name__}: a record cannot extend another record")
    defaults = {name: cls.__dict__[name] for name in names if name in cls.__dict__}
    namespace = {k: v for k, v in cls.__dict__.items() if k not in defaults and k not in ("__dict__", "__weakref__")}
    for value in namespace.values():
        code = getattr(value, "__code__", None)
        if code is not None and "__class__" in code.co_freevars:
            raise TypeError(f"{cls.__name__}: a record's methods cannot use zero-argument super()")
    namespace["__slots__"] = names
    namespace["__record_fields__"] = names
    values = _values_getter(names)
    compared_names = tuple(n for n in names if not (isinstance(defaults.get(n), Factory) and not defaults[n].compare))
    compared = _values_getter(compared_names)
    namespace["_record_values"] = staticmethod(values)
    namespace["__repr__"] = _make_repr(compared_names)
    namespace["__reduce__"] = lambda self: (type(self), values(self))  # pickle and copy, frozen or not
    if eq:
        namespace["__eq__"] = _make_eq(compared)
        namespace["__hash__"] = (lambda self: hash(compared(self))) if frozen else None
    if frozen:
        namespace["__setattr__"] = _refuse_assignment
        namespace["__delattr__"] = _refuse_assignment
    made = type(cls)(cls.__name__, cls.__bases__, namespace)
    made.__init__ = _make_init(made, names, defaults, frozen)
    return made


def _values_getter(names: tuple[str, ...]) -> Callable[[Any], tuple]:
    if len(names) > 1:
        return attrgetter(*names)
    if names:
        one = attrgetter(names[0])
        return lambda obj: (one(obj),)
    return lambda obj: ()


def _make_init(cls: type, names: tuple[str, ...], defaults: dict[str, Any], frozen: bool) -> Callable[..., None]:
    """An ``__init__`` that assigns each field: ``self.x = x`` (the fastest, specialised for
    slots), or for a frozen record through the slot's descriptor, past ``__setattr__``."""
    params, body = [], []
    namespace: dict[str, Any] = {"NOT_GIVEN": _NOT_GIVEN}
    seen_default = None

    def assign(name: str, value: str) -> str:
        return f"    set_{name}(self, {value})" if frozen else f"    self.{name} = {value}"

    for name in names:
        if frozen:
            namespace[f"set_{name}"] = cls.__dict__[name].__set__
        if name in defaults:
            seen_default = name
            default = defaults[name]
            if isinstance(default, Factory):
                namespace[f"make_{name}"] = default.make
                params.append(f"{name}=NOT_GIVEN")
                body.append(assign(name, f"make_{name}() if {name} is NOT_GIVEN else {name}"))
                continue
            if isinstance(default, (list, dict, set)):
                raise TypeError(f"{cls.__name__}.{name}: a mutable default must be given as Factory({type(default).__name__})")
            namespace[f"d_{name}"] = default
            params.append(f"{name}=d_{name}")
        elif seen_default is not None:
            raise TypeError(f"{cls.__name__}: field {name!r} without a default follows {seen_default!r}, which has one")
        else:
            params.append(name)
        body.append(assign(name, name))
    if hasattr(cls, "__post_init__"):
        body.append("    self.__post_init__()")
    source = f"def __init__(self, {', '.join(params)}):\n" + ("\n".join(body) or "    pass")
    exec(source, namespace)  # noqa: S102 - our own source, built from the class's annotations
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    return init


def _make_repr(names: tuple[str, ...]) -> Callable[[Any], str]:
    def __repr__(self: Any) -> str:
        inner = ", ".join(f"{name}={getattr(self, name)!r}" for name in names)
        return f"{type(self).__qualname__}({inner})"

    return __repr__


def _make_eq(values: Callable[[Any], tuple]) -> Callable[[Any, Any], Any]:
    def __eq__(self: Any, other: Any) -> Any:
        if other.__class__ is self.__class__:
            return values(self) == values(other)
        return NotImplemented

    return __eq__


def _refuse_assignment(self: Any, name: str, *value: Any) -> None:
    raise AttributeError(f"{type(self).__name__} is frozen: cannot change {name!r}")
