"""The value check every frame's data goes through: JSON types only, bounded depth.

Arguments, results, errors and stats cross the wire as msgpack but are stored as JSON (the
sqlite and django stores) and must mean the same in every client language, so only JSON's
types are allowed: nil, bool, str, 64-bit int, finite float, array, map with str keys. The
client checks before sending (``InvalidArguments``, nothing written or sent), the worker
checks results, and every decoder checks what it reads (``first_bad``, worded by the caller).
"""

from __future__ import annotations

from math import isfinite

from .errors import InvalidArguments

TYPE_CHECKING = False  # typing stays unimported at run time (docs/performance.md, idle RSS)
if TYPE_CHECKING:
    from typing import Any

MAX_JSON_DEPTH = 100  # levels of arrays and maps in one value, the outermost at level 0
_INT_MIN, _INT_END = -(2**63), 2**64
_TOO_DEEP = f" is nested more than {MAX_JSON_DEPTH} levels deep"


def check_json_compatible(value: Any, where: str = "value", depth: int = 0) -> None:
    """Raise InvalidArguments unless ``value`` is made of JSON types only.

    Tuples count as lists (they arrive as lists). Integers must fit in 64 bits,
    floats must be finite, mapping keys must be strings. The message names where
    the first bad value is, e.g. ``kwargs['a'][1]``."""
    bad = first_bad(value, depth)
    if bad is not None:
        raise InvalidArguments(where + "".join(reversed(bad[1:])) + bad[0])


def first_bad(value: Any, depth: int) -> list[str] | None:
    """None if ``value`` is JSON-compatible, else [what is wrong, innermost step, ..., outermost step].

    The path is built only on the way back from the first bad value, never per element: every
    frame's values go through here, and a frame can hold millions of them (a 4 MiB frame of
    empty maps took 2 s when each element's path was formatted up front)."""
    if depth > MAX_JSON_DEPTH:
        return [_TOO_DEEP]
    kind = type(value)
    # The per-element test below is written out twice, for arrays and for maps, rather than
    # shared through a call: it runs once per value in every frame.
    if kind is list or kind is tuple:
        if depth == MAX_JSON_DEPTH and value:
            return [_TOO_DEEP, "[0]"]
        for item in value:
            kind = type(item)
            if kind is str or item is None or kind is bool:
                continue
            if kind is int:
                if _INT_MIN <= item < _INT_END:
                    continue
            elif kind is float:
                if isfinite(item):
                    continue
            elif not item and (kind is dict or kind is list or kind is tuple):
                continue  # empty: fine at any depth below the limit, no call needed
            bad = first_bad(item, depth + 1)
            if bad is not None:
                bad.append(f"[{_index_of(value, item)}]")
                return bad
        return None
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                return [f": key {key!r} is not a string"]
            if depth == MAX_JSON_DEPTH:
                return [_TOO_DEEP, f"[{key!r}]"]
            kind = type(item)
            if kind is str or item is None or kind is bool:
                continue
            if kind is int:
                if _INT_MIN <= item < _INT_END:
                    continue
            elif kind is float:
                if isfinite(item):
                    continue
            elif not item and (kind is dict or kind is list or kind is tuple):
                continue
            bad = first_bad(item, depth + 1)
            if bad is not None:
                bad.append(f"[{key!r}]")
                return bad
        return None
    if value is None or kind is bool or kind is str:
        return None
    if kind is int:
        return None if _INT_MIN <= value < _INT_END else [f": integer {value} does not fit in 64 bits"]
    if kind is float:
        return None if isfinite(value) else [f": {value} is not a JSON number"]
    return [f" is a {kind.__name__}, not a JSON-compatible value"]


def _index_of(items: list | tuple, item: object) -> int:
    """The position of ``item``, found only to word an error. The first identical element is the
    one that failed: any earlier occurrence of the same object would have failed first."""
    for index, candidate in enumerate(items):
        if candidate is item:
            return index
    raise AssertionError("item not in its container")
