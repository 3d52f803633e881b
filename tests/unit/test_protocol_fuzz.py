"""Fuzzing the wire decoder (issue 6).

Whatever bytes reach the supervisor, cut wherever the socket cuts them, ``Decoder`` must
yield valid messages or raise ``ProtocolError``: never another exception, never a hang,
never memory out of proportion to the frame limit. ``test_protocol.py`` has the hand-picked
bad payloads and the round trips; this file generates them:

- arbitrary streams, cut anywhere, checked against a reference model of the framing;
- valid streams with flipped, overwritten, inserted, deleted or truncated bytes;
- message-shaped payloads with hostile msgpack in any field position (size headers that
  lie, 10,000-deep nesting, invalid UTF-8, extension types, every integer and float form);
- an exhaustive table: every field of every message against nil, bool, float, bin, ext...,
  judged by the field's *declared* annotation, not by the decoder's own type table;
- allocation measured with tracemalloc on frames built to be expensive.

``scripts/fuzz_protocol.py`` is the coverage-guided (atheris) counterpart for long runs;
the last test runs it for a few seconds when atheris is installed.
"""

from __future__ import annotations

import math
import os
import re
import struct
import subprocess
import sys
import tracemalloc
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import NoneType, UnionType
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taskpool import protocol
from taskpool.errors import InvalidArguments, ProtocolError
from taskpool.json_values import check_json_compatible
from taskpool.msgpack_claims import check_claims
from taskpool.protocol import DEFAULT_MAX_FRAME, Decoder, Message, decode_payload, encode
from taskpool.records import field_names

CLASSES: list[type[Message]] = [protocol._BY_CODE[code] for code in sorted(protocol._BY_CODE)]
CODES = frozenset(protocol._BY_CODE)
HEADER = struct.Struct(">I")
MiB = 1024 * 1024


def fuzz(examples: int) -> settings:
    """Hypothesis settings: no deadline (the machine may be busy), large inputs allowed."""
    return settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
    )


def frame(payload: bytes) -> bytes:
    return HEADER.pack(len(payload)) + payload


# -- an oracle from the declared field types ---------------------------------------
# Built from each message's annotations and docs/protocol.md ("Types", "Limits"), so a
# mistake in the decoder's own type table or its generated fast path shows up as a mismatch.


# The names protocol.py's annotations use; it imports typing only for type checkers.
TYPING_NAMES = {"Any": Any, "ClassVar": typing.ClassVar}


def declared_kinds(cls: type[Message]) -> list[tuple[str, tuple[Any, ...]]]:
    """(field name, accepted kinds) in wire order; ``float | None`` -> (float, NoneType)."""
    hints = typing.get_type_hints(cls, localns=TYPING_NAMES)
    result = []
    for name in field_names(cls):
        hint = hints[name]
        result.append((name, typing.get_args(hint) if isinstance(hint, UnionType) else (hint,)))
    return result


FIELDS: dict[type[Message], list[tuple[str, tuple[Any, ...]]]] = {cls: declared_kinds(cls) for cls in CLASSES}


def json_ok(value: Any, depth: int = 0) -> bool:
    """nil, bool, str, 64-bit int, finite float, array, map with str keys; 100 levels at most."""
    if depth > 100:
        return False
    kind = type(value)
    if value is None or kind is bool or kind is str:
        return True
    if kind is int:
        return -(2**63) <= value < 2**64
    if kind is float:
        return math.isfinite(value)
    if kind is list:
        return all(json_ok(item, depth + 1) for item in value)
    if kind is dict:
        return all(type(key) is str and json_ok(item, depth + 1) for key, item in value.items())
    return False


def kind_accepts(kind: Any, value: Any) -> bool:
    """Whether a field declared as ``kind`` may carry ``value`` (a bool is never a number)."""
    vtype = type(value)
    if kind is NoneType:
        return value is None
    if kind is Any:
        return json_ok(value)
    if kind in (bool, str, int):
        return vtype is kind
    if kind is float:
        return vtype is int or (vtype is float and math.isfinite(value))
    if kind in (list, dict):
        return vtype is kind and json_ok(value)
    raise AssertionError(f"no oracle for field type {kind!r}: teach kind_accepts and kind_strategy about it")


def accepts(kinds: tuple[Any, ...], value: object) -> bool:
    return any(kind_accepts(kind, value) for kind in kinds)


def same(a: Any, b: Any) -> bool:
    """Equal with exactly the same types all the way down (True is not 1, 1.0 is not 1)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, Message):
        return all(same(getattr(a, name), getattr(b, name)) for name in field_names(a))
    if type(a) is list:
        return len(a) == len(b) and all(map(same, a, b))
    if type(a) is dict:
        return list(a) == list(b) and all(same(a[key], b[key]) for key in a)
    if type(a) is float:
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    return a == b


def check_accepted(msg: Message) -> None:
    """A message the decoder let through obeys its declared types and re-encodes exactly:
    nothing non-JSON (bytes, Timestamp, ExtType, NaN, a bool for a number) slipped in."""
    assert isinstance(msg, Message), msg
    for name, kinds in FIELDS[type(msg)]:
        value = getattr(msg, name)
        assert accepts(kinds, value), f"{type(msg).__name__}.{name} = {value!r} breaks its declared type"
    again = decode_payload(encode(msg)[4:])
    assert same(again, msg), (again, msg)


# -- running the decoder, and a model of what it should do ---------------------------


@dataclass
class Outcome:
    messages: list[Message]
    error: bool  # stopped by ProtocolError
    pending: int | None  # bytes held at the end (None after an error)


def pieces(data: bytes, cuts: Iterable[int] | None) -> list[bytes]:
    """``data`` cut at ``cuts`` (clamped; None: one byte at a time)."""
    if cuts is None:
        return [data[i : i + 1] for i in range(len(data))] or [b""]
    bounds = [0, *sorted({min(max(cut, 0), len(data)) for cut in cuts}), len(data)]
    return [data[start:end] for start, end in zip(bounds, bounds[1:], strict=False)]


def run_decoder(data: bytes, cuts: Iterable[int] | None, max_frame: int) -> Outcome:
    """Feed ``data`` in pieces as the supervisor's loop does, checking the buffer bound as it goes.

    Any exception other than ProtocolError propagates and fails the test."""
    decoder = Decoder(max_frame)
    got: list[Message] = []
    try:
        for piece in pieces(data, cuts):
            for msg in decoder.feed(piece):
                # While a read is drained the buffer holds at most one incomplete frame plus that read.
                assert decoder.pending <= max_frame + 3 + len(piece)
                got.append(msg)
            # Between reads: at most one incomplete frame, header included.
            assert decoder.pending <= max_frame + 3, (decoder.pending, max_frame)
    except ProtocolError:
        return Outcome(got, True, None)
    return Outcome(got, False, decoder.pending)


def framing_model(data: bytes, max_frame: int) -> Outcome:
    """The whole stream at once, one frame after another, per docs/protocol.md's framing."""
    got: list[Message] = []
    offset = 0
    while len(data) - offset >= 4:
        (length,) = HEADER.unpack_from(data, offset)
        if length > max_frame:
            return Outcome(got, True, None)
        end = offset + 4 + length
        if end > len(data):
            break
        try:
            got.append(decode_payload(data[offset + 4 : end]))
        except ProtocolError:
            return Outcome(got, True, None)
        offset = end
    return Outcome(got, False, len(data) - offset)


def assert_same_outcome(got: Outcome, expected: Outcome) -> None:
    assert (got.error, got.pending, len(got.messages)) == (expected.error, expected.pending, len(expected.messages))
    for a, b in zip(got.messages, expected.messages, strict=True):
        assert same(a, b), (a, b)


def decode_peak(data: bytes, max_frame: int) -> tuple[int, Outcome]:
    """Peak bytes allocated (tracemalloc) while a fresh Decoder reads ``data`` in one piece."""
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        outcome = run_decoder(data, [], max_frame)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        if not was_tracing:
            tracemalloc.stop()
    return peak, outcome


def memory_bound(max_frame: int) -> int:
    """What decoding one frame may cost: the buffer, the payload copy, msgpack's work, slack."""
    return 4 * max_frame + MiB


# -- strategies: valid values and messages ------------------------------------------

INT64 = st.integers(min_value=-(2**63), max_value=2**64 - 1)
FINITE = st.floats(allow_nan=False, allow_infinity=False)
json_scalars = st.none() | st.booleans() | INT64 | FINITE | st.text(max_size=8)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=8,
)
KIND_STRATEGIES: dict[Any, st.SearchStrategy[Any]] = {
    NoneType: st.none(),
    Any: json_values,
    bool: st.booleans(),
    str: st.text(max_size=12),
    int: INT64,
    float: FINITE | INT64,
    list: st.lists(json_values, max_size=3),
    dict: st.dictionaries(st.text(max_size=6), json_values, max_size=3),
}


def field_values(cls: type[Message]) -> st.SearchStrategy[tuple[Any, ...]]:
    return st.tuples(*[st.one_of(*[KIND_STRATEGIES[kind] for kind in kinds]) for _, kinds in FIELDS[cls]])


def _build(cls: type[Message]) -> st.SearchStrategy[Message]:
    return field_values(cls).map(lambda values: cls(*values))


valid_messages: st.SearchStrategy[Message] = st.sampled_from(CLASSES).flatmap(_build)

# -- strategies: hostile msgpack fragments ------------------------------------------

PACK = {1: struct.Struct(">B").pack, 2: struct.Struct(">H").pack, 4: struct.Struct(">I").pack}
STR_TAGS = {1: b"\xd9", 2: b"\xda", 4: b"\xdb"}
BIN_TAGS = {1: b"\xc4", 2: b"\xc5", 4: b"\xc6"}
ARRAY_TAGS = {2: b"\xdc", 4: b"\xdd"}
MAP_TAGS = {2: b"\xde", 4: b"\xdf"}
EXT_TAGS = {1: b"\xc7", 2: b"\xc8", 4: b"\xc9"}
FIXEXT_TAGS = {1: b"\xd4", 2: b"\xd5", 4: b"\xd6", 8: b"\xd7", 16: b"\xd8"}
INT_FORMS = [b"\xcc", b"\xcd", b"\xce", b"\xcf", b"\xd0", b"\xd1", b"\xd2", b"\xd3"]  # uint8..64, int8..64
INT_SIZES = dict(zip(INT_FORMS, [1, 2, 4, 8, 1, 2, 4, 8], strict=True))
HOSTILE_FRAME = 64 * 1024  # the limit for the hostile-payload property: room for 10,000-deep nesting


def str_bytes(raw: bytes, width: int | None = None) -> bytes:
    """A msgpack str holding ``raw`` (UTF-8 or not): fixstr when it fits and no width is asked."""
    if width is None and len(raw) < 32:
        return bytes([0xA0 | len(raw)]) + raw
    width = width or 4
    return STR_TAGS[width] + PACK[width](len(raw)) + raw


def array_header(count: int, width: int | None = None) -> bytes:
    if width is None and count < 16:
        return bytes([0x90 | count])
    width = width or (2 if count < 2**16 else 4)
    return ARRAY_TAGS[width] + PACK[width](count)


def int8(value: int) -> bytes:
    return value.to_bytes(1, "big", signed=True)


def claims(width: int) -> st.SearchStrategy[int]:
    """A size field that lies: tiny, or beyond anything the frame could hold. (Truthful large
    claims are the memory tests' business, below.)"""
    top = 2 ** (8 * width) - 1
    return st.integers(0, 16) | st.just(top) | st.integers(min(HOSTILE_FRAME + 1, top), top)


# A map32 / array32 / str32 / bin32 / ext32 header claiming 2**32-1 entries or bytes, few bytes after.
huge_claims = st.builds(
    lambda tag, tail: tag + b"\xff\xff\xff\xff" + tail,
    st.sampled_from([b"\xdd", b"\xdf", b"\xdb", b"\xc6", b"\xc9"]),
    st.binary(max_size=16),
)
lying_sizes = st.sampled_from(
    [(tags, width) for tags in (STR_TAGS, BIN_TAGS, ARRAY_TAGS, MAP_TAGS, EXT_TAGS) for width in tags]
).flatmap(
    lambda tw: st.builds(
        lambda claim, body: tw[0][tw[1]] + PACK[tw[1]](claim) + body, claims(tw[1]), st.binary(max_size=24)
    )
)
OPENERS = [b"\x91", b"\xdc\x00\x01", b"\xdd\x00\x00\x00\x01", b"\x81\xa0", b"\x81\xa1k", b"\xde\x00\x01\xa0"]
leaves = st.sampled_from([b"\xc0", b"\x01", b"\x90", b"\x80", b"\xa0", b"\xc1", b"\xd4\x05\x00", b"\xcb\x7f\xf8" + bytes(6)])
deep_nesting = st.builds(
    lambda openers, depth, leaf: b"".join(openers[i % len(openers)] for i in range(depth)) + leaf,
    st.lists(st.sampled_from(OPENERS), min_size=1, max_size=3),
    st.integers(1, 10_000) | st.sampled_from([99, 100, 101, 102, 1023, 1024, 1025, 10_000]),
    leaves,
)
BAD_UTF8 = [
    b"\xff", b"\xfe", b"\x80", b"\xc0\x80", b"\xc3\x28", b"\xed\xa0\x80", b"\xe2\x82", b"\xf4\x90\x80\x80",
    b"\xf8\x88\x80\x80\x80",
]
invalid_utf8 = st.builds(
    lambda pre, bad, post, width, as_key: (
        (b"\x81" if as_key else b"") + str_bytes(pre.encode() + bad + post.encode(), width) + (b"\xc0" if as_key else b"")
    ),
    st.text(max_size=4),
    st.sampled_from(BAD_UTF8),
    st.text(max_size=4),
    st.sampled_from([None, 1, 2, 4]),
    st.booleans(),
)
fixext = st.sampled_from(sorted(FIXEXT_TAGS)).flatmap(
    lambda size: st.builds(
        lambda code, data: FIXEXT_TAGS[size] + int8(code) + data,
        st.integers(-128, 127),
        st.binary(min_size=size, max_size=size),
    )
)
ext_var = st.sampled_from(sorted(EXT_TAGS)).flatmap(
    lambda width: st.builds(
        lambda code, data, lie: EXT_TAGS[width] + PACK[width](len(data) if lie is None else lie) + int8(code) + data,
        st.integers(-128, 127),
        st.binary(max_size=20),
        st.none() | claims(width),
    )
)
timestamps = st.one_of(  # ext -1, in its three valid sizes (any bits, so nanoseconds may overflow) and invalid ones
    st.binary(min_size=4, max_size=4).map(lambda d: b"\xd6\xff" + d),
    st.binary(min_size=8, max_size=8).map(lambda d: b"\xd7\xff" + d),
    st.binary(min_size=12, max_size=12).map(lambda d: b"\xc7\x0c\xff" + d),
    st.sampled_from([1, 2, 16]).map(lambda size: FIXEXT_TAGS[size] + b"\xff" + bytes(size)),
    st.integers(0, 20).filter(lambda n: n not in (4, 8, 12)).map(lambda n: b"\xc7" + PACK[1](n) + b"\xff" + bytes(n)),
)
integers = st.one_of(
    st.sampled_from(INT_FORMS).flatmap(  # every width, canonical or not, every bit pattern
        lambda tag: st.binary(min_size=INT_SIZES[tag], max_size=INT_SIZES[tag]).map(lambda d: tag + d)
    ),
    st.sampled_from([b"\xcf" + b"\xff" * 8, b"\xd3\x80" + bytes(7), b"\xcf" + bytes(7) + b"\x01", b"\xd3" + b"\xff" * 8]),
    # msgpack has no integer wider than 64 bits: the nearest things are an ext or a decimal string.
    st.binary(min_size=9, max_size=32).map(lambda d: b"\xc7" + PACK[1](len(d)) + b"\x01" + d),
    st.integers(min_value=2**64).map(lambda n: str_bytes(str(n).encode())),
)
floats = st.one_of(
    st.binary(min_size=4, max_size=4).map(lambda d: b"\xca" + d),
    st.binary(min_size=8, max_size=8).map(lambda d: b"\xcb" + d),
    st.sampled_from([b"\xca\x7f\xc0\x00\x00", b"\xca\x7f\x80\x00\x00", b"\xcb\xff\xf0" + bytes(6), b"\xcb\x80" + bytes(7)]),
)
hostile_fragments = st.one_of(
    huge_claims,
    lying_sizes,
    deep_nesting,
    invalid_utf8,
    fixext,
    ext_var,
    timestamps,
    integers,
    floats,
    st.sampled_from([b"\xc0", b"\xc2", b"\xc3", b"\xc1"]),  # nil, false, true, the never-used byte
    json_values.map(lambda v: msgpack.packb(v, use_bin_type=True)),
    st.binary(max_size=24),
)


@st.composite
def hostile_payloads(draw: st.DrawFn) -> bytes:
    """A message-shaped payload ([type code, fields...]) with hostile fragments in 1-3 positions
    (the type code's too), a right or wrong element count, canonical or not, maybe trailing bytes."""
    cls = draw(st.sampled_from(CLASSES))
    parts = [msgpack.packb(cls.type_code)] + [msgpack.packb(v, use_bin_type=True) for v in draw(field_values(cls))]
    for index in draw(st.lists(st.integers(0, len(parts) - 1), min_size=1, max_size=3)):
        parts[index] = draw(hostile_fragments)
    count = len(parts) if draw(st.integers(0, 3)) else draw(st.sampled_from([len(parts) - 1, len(parts) + 1, 2**32 - 1]))
    widths = [w for w in (None, 2, 4) if w != 2 or count < 2**16]
    header = array_header(count, draw(st.sampled_from(widths)))
    trailing = b"" if draw(st.integers(0, 3)) else draw(st.binary(min_size=1, max_size=4))
    return header + b"".join(parts) + trailing


# -- 1. any bytes, cut anywhere -------------------------------------------------------

MODEL_FRAME = 256  # small, so generated frames fall on both sides of the limit


@st.composite
def wire_streams(draw: st.DrawFn) -> bytes:
    """Garbage, real frames, framed garbage, headers at and around the limit, in any mix."""
    unit = st.one_of(
        valid_messages.map(encode),
        st.binary(max_size=MODEL_FRAME + 8).map(frame),
        hostile_payloads().map(frame),
        st.sampled_from([MODEL_FRAME, MODEL_FRAME + 1, 2**31, 2**32 - 1]).map(HEADER.pack),
        st.binary(max_size=40),
    )
    return b"".join(draw(st.lists(unit, max_size=5)))


cut_points = st.lists(st.integers(min_value=0, max_value=2_000), max_size=10) | st.none()


@fuzz(800)
@given(data=wire_streams(), cuts=cut_points)
def test_any_stream_cut_anywhere_behaves_as_the_framing_model(data: bytes, cuts: list[int] | None) -> None:
    """However reads split the stream, the decoder yields exactly what the whole stream holds,
    frame by frame, up to the first bad frame (then ProtocolError), and keeps only the bytes of
    the incomplete frame at the end. This is what makes a slow or fragmenting peer harmless."""
    got = run_decoder(data, cuts, MODEL_FRAME)
    assert_same_outcome(got, framing_model(data, MODEL_FRAME))
    for msg in got.messages:
        check_accepted(msg)


# -- 2. valid frames, damaged ----------------------------------------------------------


@st.composite
def mutated_streams(draw: st.DrawFn) -> bytes:
    """1-4 valid frames, then 1-4 of: bit flip, byte overwrite, insertion, deletion, truncation."""
    data = bytearray(b"".join(encode(m) for m in draw(st.lists(valid_messages, min_size=1, max_size=4))))
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        pos = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        if op == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[pos] = draw(st.sampled_from([0x00, 0xFF, 0xC0, 0xC1, 0xDD, 0xDF, 0xDB, 0xC9, 0xD4, 0xCF, 0x91]))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8) | hostile_fragments)
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 8))]
        else:
            del data[pos:]
    return bytes(data)


@fuzz(600)
@given(data=mutated_streams(), cuts=cut_points)
def test_damaged_valid_streams_yield_messages_or_protocol_error(data: bytes, cuts: list[int] | None) -> None:
    """Corruption on the wire (or a peer that lies a little) never escapes as another exception,
    and whatever still decodes is a message that obeys its declared types."""
    got = run_decoder(data, cuts, 4096)
    assert_same_outcome(got, framing_model(data, 4096))
    for msg in got.messages:
        check_accepted(msg)


@fuzz(400)
@given(
    msgs=st.lists(valid_messages, min_size=2, max_size=5),
    which=st.integers(min_value=0),
    damage=st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), min_size=1, max_size=4),
    cuts=cut_points,
)
def test_damage_inside_one_payload_leaves_the_other_frames_intact(
    msgs: list[Message], which: int, damage: list[tuple[int, int]], cuts: list[int] | None
) -> None:
    """The length header alone delimits a frame: bytes changed inside one payload can fail that
    frame, or turn it into another valid message, but cannot shift or spoil the frames around it."""
    frames = [encode(m) for m in msgs]
    k = which % len(frames)
    body = bytearray(frames[k])
    for pos, value in damage:
        body[4 + pos % (len(body) - 4)] = value
    data = b"".join(frames[:k]) + bytes(body) + b"".join(frames[k + 1 :])
    got = run_decoder(data, cuts, DEFAULT_MAX_FRAME)
    assert all(same(a, b) for a, b in zip(got.messages[:k], msgs[:k], strict=True))
    if got.error:
        assert len(got.messages) == k
    else:
        assert got.pending == 0 and len(got.messages) == len(msgs)
        check_accepted(got.messages[k])
        assert all(same(a, b) for a, b in zip(got.messages[k + 1 :], msgs[k + 1 :], strict=True))


# -- 3. hostile msgpack in message position -----------------------------------------------


@fuzz(800)
@given(payload=hostile_payloads(), cuts=cut_points)
def test_hostile_msgpack_in_any_field_yields_a_valid_message_or_protocol_error(
    payload: bytes, cuts: list[int] | None
) -> None:
    """Lying size headers (2**32-1 entries, 4 GiB strings), 10,000-deep nesting, invalid UTF-8,
    extension types (timestamp -1 included), odd integer and float encodings, the never-used
    0xc1, wrong element counts, trailing bytes: ProtocolError, or a message that re-encodes
    exactly. Allocation stays within ``memory_bound`` of the frame limit."""
    data = frame(payload)
    got = run_decoder(data, cuts, HOSTILE_FRAME)
    assert_same_outcome(got, framing_model(data, HOSTILE_FRAME))
    for msg in got.messages:
        check_accepted(msg)
    peak, _ = decode_peak(data, HOSTILE_FRAME)
    assert peak < memory_bound(HOSTILE_FRAME), f"{peak} bytes allocated for a {len(payload)}-byte payload"


NON_INT_TAGS = st.one_of(
    st.none(), st.booleans(), st.floats(), st.text(max_size=4), st.binary(max_size=4),
    st.lists(INT64, max_size=2), st.dictionaries(st.text(max_size=2), INT64, max_size=2),
).map(lambda v: msgpack.packb(v, use_bin_type=True))


@fuzz(300)
@given(
    tag=INT64.filter(lambda code: code not in CODES).map(msgpack.packb) | NON_INT_TAGS | fixext | timestamps,
    cls=st.sampled_from(CLASSES),
    data=st.data(),
)
def test_unknown_or_non_integer_type_tags_are_refused(tag: bytes, cls: type[Message], data: st.DataObject) -> None:
    """Only the fixed table of type codes decodes; any other tag, followed by fields that would
    be valid for a real message, is refused (no lookup by name, nothing imported)."""
    values = data.draw(field_values(cls))
    payload = array_header(1 + len(values)) + tag + b"".join(msgpack.packb(v, use_bin_type=True) for v in values)
    with pytest.raises(ProtocolError):
        decode_payload(payload)
    assert run_decoder(frame(payload), [], DEFAULT_MAX_FRAME).error


# -- 4. every field against every kind of value ----------------------------------------

BASELINE = {NoneType: None, Any: None, bool: False, str: "s", int: 1, float: 1.5, list: [], dict: {}}


class NotJson:
    """Stands for a probe whose decoded value is not JSON (ext, timestamp, invalid UTF-8)."""


NOT_JSON = NotJson()


def nested_lists(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


# name -> (the value the field would carry, its msgpack bytes)
PROBES: dict[str, tuple[object, bytes]] = {
    name: (value, msgpack.packb(value, use_bin_type=True))
    for name, value in {
        "nil": None, "true": True, "false": False, "zero": 0, "-1": -1, "uint64 max": 2**64 - 1,
        "int64 min": -(2**63), "float": 1.5, "-0.0": -0.0, "nan": math.nan, "inf": math.inf, "-inf": -math.inf,
        "empty str": "", "str": "é✓\U0001f600", "bin": b"x", "empty array": [], "array": [1, "a", None, 2.5],
        "array with bin": [b"x"], "array with nan": [math.nan], "lists 100 deep": nested_lists(100),
        "lists 101 deep": nested_lists(101), "empty map": {}, "map": {"k": [1, {"j": None}]},
        "map with int key": {1: 2}, "map with bin key": {b"k": 1}, "map with float value inf": {"k": math.inf},
    }.items()
} | {
    "uint64 form of 1": (1, b"\xcf" + bytes(7) + b"\x01"),
    "int64 form of -1": (-1, b"\xd3" + b"\xff" * 8),
    "float32 1.5": (1.5, b"\xca" + struct.pack(">f", 1.5)),
    "float32 nan": (math.nan, b"\xca\x7f\xc0\x00\x00"),
    "str32 form": ("ab", b"\xdb\x00\x00\x00\x02ab"),
    "invalid UTF-8 str": (NOT_JSON, b"\xa2\xff\xfe"),
    "invalid UTF-8 map key": (NOT_JSON, b"\x81\xa1\xff\xc0"),
    "fixext1 type 5": (NOT_JSON, b"\xd4\x05\x00"),
    "fixext16 type -128": (NOT_JSON, b"\xd8\x80" + bytes(16)),
    "ext8 empty type 0": (NOT_JSON, b"\xc7\x00\x00"),
    "ext32 type 127": (NOT_JSON, b"\xc9\x00\x00\x00\x01\x7f\x00"),
    "timestamp32": (NOT_JSON, b"\xd6\xff" + bytes(4)),
    "timestamp96": (NOT_JSON, b"\xc7\x0c\xff" + bytes(12)),
    "timestamp of 3 bytes": (NOT_JSON, b"\xc7\x03\xff" + bytes(3)),
    "array holding a timestamp": (NOT_JSON, b"\x91\xd7\xff" + bytes(8)),
    "never-used byte 0xc1": (NOT_JSON, b"\xc1"),
}


@pytest.mark.parametrize("cls", [c for c in CLASSES if FIELDS[c]], ids=lambda c: c.__name__)
def test_every_field_takes_exactly_what_its_declared_type_allows(cls: type[Message]) -> None:
    """nil, bool, float, NaN, bin, ext, timestamps... in every field position of every message:
    decoded iff the field's annotation allows it (a bool is not a number, int is a float)."""
    kinds = FIELDS[cls]
    baseline = [msgpack.packb(BASELINE[k[0]], use_bin_type=True) for _, k in kinds]
    wrong = []
    for index, (name, accepted) in enumerate(kinds):
        for probe, (value, packed) in PROBES.items():
            parts = [msgpack.packb(cls.type_code), *baseline[:index], packed, *baseline[index + 1 :]]
            payload = array_header(len(parts)) + b"".join(parts)
            expected = value is not NOT_JSON and accepts(accepted, value)
            try:
                msg = decode_payload(payload)
            except ProtocolError:
                if expected:
                    wrong.append(f"{name} refused {probe}")
                continue
            if not expected:
                wrong.append(f"{name} accepted {probe}")
            elif not same(getattr(msg, name), value):
                wrong.append(f"{name}: {probe} decoded as {getattr(msg, name)!r}")
    assert not wrong, f"{cls.__name__}: " + "; ".join(wrong)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_wrong_field_counts_are_refused(cls: type[Message]) -> None:
    """Every message, one field short, one too many, none at all, ten extra; and an array
    header that counts more or fewer elements than follow."""
    n = len(FIELDS[cls])
    values = [BASELINE[k[0]] for _, k in FIELDS[cls]]
    for count in sorted({max(n - 1, 0), n + 1, 0, n + 10} - {n}):
        padded = (values + [None] * count)[:count]
        with pytest.raises(ProtocolError):
            decode_payload(msgpack.packb([cls.type_code, *padded]))
    body = msgpack.packb(cls.type_code) + b"".join(msgpack.packb(v) for v in values)
    for count in (n, n + 2, 2**16 - 1, 2**32 - 1):  # n: one element short, counting the type code
        with pytest.raises(ProtocolError):
            decode_payload(array_header(count) + body)
    if n:
        with pytest.raises(ProtocolError):  # one element too few for the header: the last field is cut
            decode_payload(array_header(n + 1) + body[: -len(msgpack.packb(values[-1]))])


# -- 5. integers over 64 bits -------------------------------------------------------------

huge_ints = st.one_of(
    st.integers(min_value=2**64),
    st.integers(max_value=-(2**63) - 1),
    st.sampled_from([2**64, -(2**63) - 1, 10**40, 2**1000, -(2**1000)]),
)
wrappings: list[Callable[[object], object]] = [
    lambda x: x, lambda x: [x], lambda x: {"k": x}, lambda x: [1, {"a": [None, x]}], lambda x: (x,),
]


@fuzz(300)
@given(
    msg=st.sampled_from([c for c in CLASSES if FIELDS[c]]).flatmap(_build),
    position=st.integers(min_value=0),
    huge=huge_ints,
    wrap=st.sampled_from(wrappings),
)
def test_integers_over_64_bits_are_refused_when_encoding(msg: Message, position: int, huge: int, wrap: Callable) -> None:
    """msgpack has no integer wider than 64 bits, so none can arrive; the encoder must say so as
    InvalidArguments (not OverflowError), wherever the integer sits, however deep."""
    names = list(field_names(msg))
    values = {name: getattr(msg, name) for name in names}
    values[names[position % len(names)]] = wrap(huge)
    bad = type(msg)(**values)
    with pytest.raises(InvalidArguments):
        encode(bad)


# -- 6. memory ------------------------------------------------------------------------------

MEM_FRAME = MiB


def padded(head: bytes, size: int = MEM_FRAME, filler: bytes = b"\xc0") -> bytes:
    """``head`` then ``filler`` up to exactly ``size`` bytes: a frame as large as the limit allows."""
    return head + filler * ((size - len(head)) // len(filler)) + b"\xc0" * ((size - len(head)) % len(filler))


# Hostile shapes grown to fill a whole frame of MEM_FRAME bytes.
HOSTILE_FRAMES: dict[str, bytes] = {
    "array32 claiming 2**32-1 entries": padded(b"\xdd\xff\xff\xff\xff"),
    "map32 claiming 2**32-1 entries": padded(b"\xdf\xff\xff\xff\xff"),
    "str32 claiming 4 GiB": padded(b"\x92\x04\xdb\xff\xff\xff\xff"),
    "bin32 claiming 4 GiB": padded(b"\x92\x04\xc6\xff\xff\xff\xff"),
    "ext32 claiming 4 GiB": padded(b"\x92\x0d\xc9\xff\xff\xff\xff\x05"),
    "Submit.args claiming 2**32-1 entries": padded(b"\x9c\x02\xa1t\xa1n\xdd\xff\xff\xff\xff"),
    "Stats.data map32 claiming 2**32-1 entries": padded(b"\x92\x0d\xdf\xff\xff\xff\xff"),
    "arrays nested 10,000 deep": padded(b"\x91" * 10_000),
    "maps nested 10,000 deep": padded(b"\x92\x0d" + b"\x81\xa1k" * 10_000),
    "array16 nested 10,000 deep in Submit.args": padded(b"\x9c\x02\xa1t\xa1n" + b"\xdc\x00\x01" * 10_000),
    "arrays nested 100,000 deep": padded(b"\x91" * 100_000),
    "a whole-frame str, invalid UTF-8 at its end": (
        b"\x92\x04\xdb" + HEADER.pack(MEM_FRAME - 7) + b"x" * (MEM_FRAME - 8) + b"\xff"
    ),
    "fixext1 repeated": padded(b"\x92\x0d\x81\xa1k\xdd" + HEADER.pack((MEM_FRAME - 10) // 3), filler=b"\xd4\x05\x00"),
    "ext32 of a whole frame": b"\x92\x0d\xc9" + HEADER.pack(MEM_FRAME - 8) + b"\x05" + bytes(MEM_FRAME - 8),
    "invalid UTF-8 map keys repeated": padded(b"\x92\x0d\xdf" + HEADER.pack(MEM_FRAME // 4), filler=b"\xa1\xff\xc0"),
}


@pytest.mark.parametrize("payload", HOSTILE_FRAMES.values(), ids=HOSTILE_FRAMES.keys())
def test_hostile_frames_allocate_a_small_multiple_of_max_frame(payload: bytes) -> None:
    """A frame as large as the limit, shaped to make the decoder over-allocate, costs at most
    ``memory_bound`` (4 x max_frame + 1 MiB) while it is decoded, and is refused or valid."""
    assert len(payload) <= MEM_FRAME
    peak, outcome = decode_peak(frame(payload), MEM_FRAME)
    assert outcome.error or (len(outcome.messages) == 1 and outcome.pending == 0)
    assert peak < memory_bound(MEM_FRAME), f"{peak / MiB:.1f} MiB for a {len(payload) / MiB:.1f} MiB frame"


DENSE_FRAME = 64 * 1024
# One element, repeated to fill a Stats.data["k"] array of a whole frame: each becomes a Python
# object, so memory is the frame size times (object size / encoded size). Linear, but not 4x.
DENSE_ELEMENTS = {
    "nil": b"\xc0",
    "fixint": b"\x05",
    "int16": b"\xd1\x12\x34",
    "uint64 max": b"\xcf" + b"\xff" * 8,
    "float32": b"\xca\x3f\xc0\x00\x01",
    "2-char str": b"\xa2xy",
    "empty array": b"\x90",
    "empty map": b"\x80",
    "timestamp32 (refused after decoding)": b"\xd6\xff\x00\x00\x01\x00",
}


def dense_payload(element: bytes, size: int = DENSE_FRAME) -> bytes:
    head = b"\x92\x0d\x81\xa1k\xdd"
    count = (size - len(head) - 4) // len(element)
    return head + HEADER.pack(count) + element * count


def whole_frame_str(char: str, tail: bytes = b"", size: int = DENSE_FRAME) -> bytes:
    """Cancel(task_id=a str as long as the frame allows), optionally spoilt by ``tail``."""
    body = char.encode() * ((size - 7 - len(tail)) // len(char.encode())) + tail
    return b"\x92\x04\xdb" + HEADER.pack(len(body)) + body


LINEAR_FRAMES = {name: dense_payload(element) for name, element in DENSE_ELEMENTS.items()} | {
    "whole-frame str of 4-byte characters": whole_frame_str("\U0001f600"),
    "whole-frame str of 3-byte characters, invalid UTF-8 at its end": whole_frame_str("✓", b"\xff"),
}


@pytest.mark.parametrize("payload", LINEAR_FRAMES.values(), ids=LINEAR_FRAMES.keys())
def test_frames_of_many_or_large_values_cost_memory_linear_in_their_size(payload: bytes) -> None:
    """No frame costs more than ~100x its size, so memory per connection is bounded by --max-frame.
    Measured: containers of 1-byte empty maps ~75x, empty arrays ~66x, short strs ~19x, small
    ints ~10-15x; a str of 4-byte characters ~7x (CPython's UTF-8 decoder sizes its buffer at 4
    bytes per input byte, on top of the Decoder's copy of the payload). A valid frame's own objects
    are the message: not bounded below that (docs/protocol.md, Limits)."""
    peak, outcome = decode_peak(frame(payload), DENSE_FRAME)
    assert outcome.error or len(outcome.messages) == 1
    assert peak < 100 * DENSE_FRAME + MiB, f"{peak / MiB:.1f} MiB for a {len(payload) / 1024:.0f} KiB frame"


def test_checking_a_frame_of_empty_maps_allocates_nothing_per_element() -> None:
    """The JSON check of decoded values formats no path per element (only the path to a bad
    value, once found). It used to build a string for each of them: ~30x a plain loop, 2 s of
    the supervisor's loop for a 4 MiB frame of empty maps, and memory to match. Measured as
    allocation, which a busy machine does not change: a constant, not 200,000 strings."""
    value = {"k": [{} for _ in range(200_000)]}
    tracemalloc.start()
    try:
        check_json_compatible(value, "data")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024, f"the check allocated {peak / 1024:.0f} KiB for 200,000 empty maps"
    value["k"][150_000] = {"bad": b"bytes"}
    with pytest.raises(protocol.InvalidArguments, match=r"data\['k'\]\[150000\]\['bad'\]"):
        check_json_compatible(value, "data")


# 1,000 array32 headers, each claiming 10,000 entries (each no more than the payload's length), then
# padding: a 10,000-byte payload. msgpack preallocates every level's list before reading its elements
# (~80 MB here); decode_payload refuses it first, since the claims add up to more than the payload's bytes.
NESTED_CLAIMS = (b"\xdd" + HEADER.pack(10_000)) * 1_000 + b"\xc0" * 5_000


def test_nested_truthful_claims_stay_within_4x_max_frame() -> None:
    assert len(NESTED_CLAIMS) == 10_000
    peak, outcome = decode_peak(frame(NESTED_CLAIMS), DEFAULT_MAX_FRAME)
    assert outcome.error
    assert peak < memory_bound(DEFAULT_MAX_FRAME), f"{peak / MiB:.1f} MiB for a 10,000-byte frame"
    with pytest.raises(ProtocolError, match="containers claim at least 20000 elements in a payload of 10000 bytes"):
        decode_payload(NESTED_CLAIMS)


def test_deeper_nested_claims_are_refused_as_cheaply() -> None:
    """The same shape 10x deeper (10,000 levels, beyond msgpack's 1,024-level stack) is refused
    by the same check before msgpack sees it."""
    deeper = (b"\xdd" + HEADER.pack(100_000)) * 10_000 + b"\xc0" * 50_000
    peak, outcome = decode_peak(frame(deeper), DEFAULT_MAX_FRAME)
    assert outcome.error
    assert peak < memory_bound(DEFAULT_MAX_FRAME)


def whole_frame_of_claims(header: bytes, between: bytes = b"", levels: int = 1_000, size: int = MEM_FRAME) -> bytes:
    """``levels`` nested container headers (each followed by ``between``), then nil up to ``size``."""
    head = (header + between) * levels
    return head + b"\xc0" * (size - len(head))


BIG_CLAIMS = {
    # msgpack 1.0 preallocated each claim whole: 1,000 x 2**20 x 8 bytes = ~8 GB (a MemoryError under
    # a memory limit); 1.2 preallocates 10,000 entries per level, ~85 MB.
    "array32 x 1,000, each claiming the whole frame": whole_frame_of_claims(b"\xdd" + HEADER.pack(MEM_FRAME)),
    "array16 x 1,000, each claiming 65,535": whole_frame_of_claims(b"\xdc\xff\xff"),
    "map32 x 1,000, each claiming half the frame": whole_frame_of_claims(b"\xdf" + HEADER.pack(MEM_FRAME // 2), b"\xa0"),
    "Submit.args, array32 x 1,000 inside": b"\x9c\x02\xa1t\xa1n"
    + whole_frame_of_claims(b"\xdd" + HEADER.pack(MEM_FRAME), size=MEM_FRAME - 6),
}


@pytest.mark.parametrize("payload", BIG_CLAIMS.values(), ids=BIG_CLAIMS.keys())
def test_a_whole_frame_of_nested_big_claims_is_refused_before_msgpack_allocates(payload: bytes) -> None:
    """1 MiB of nested array/map headers, each claiming no more than the frame's length: refused by
    the claims check with ProtocolError, without msgpack preallocating anything."""
    assert len(payload) == MEM_FRAME
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError, match=r"containers claim at least \d+ elements in a payload of 1048576 bytes"):
            decode_payload(payload)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024, f"{peak / 1024:.0f} KiB allocated to refuse a 1 MiB payload"
    peak, outcome = decode_peak(frame(payload), MEM_FRAME)
    assert outcome.error
    assert peak < 3 * MEM_FRAME, f"{peak / MiB:.1f} MiB for a 1 MiB frame"  # the buffer and one copy of the payload


WALKED_TOKENS = {  # each repeated to fill 1 MiB after an array32 header, so the claims walk runs
    "fixstr": b"\xa2xy",
    "float64": b"\xcb" + bytes(8),
    "empty str8": b"\xd9\x00",
    "str8 of 40 bytes": b"\xd9\x28" + b"x" * 40,
    "array16 of 1": b"\xdc\x00\x01\x01",
    "fixmap of 1": b"\x81\xa1a\x01",
}


@pytest.mark.parametrize("token", WALKED_TOKENS.values(), ids=WALKED_TOKENS.keys())
def test_the_claims_walk_allocates_nothing_per_token(token: bytes) -> None:
    """The walk's regex is possessive: a greedy one keeps a backtracking state per token (~70 bytes:
    ~70 MiB for this 1 MiB payload), an amplification of its own."""
    count = (MEM_FRAME - 5) // len(token)
    payload = b"\xdd" + HEADER.pack(count) + token * count
    tracemalloc.start()
    try:
        check_claims(payload)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024, f"{peak / 1024:.0f} KiB allocated to walk a 1 MiB payload"


# -- 7. the atheris harness -------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]


def test_atheris_harness_runs_clean_for_a_few_seconds(tmp_path: Path) -> None:
    """scripts/fuzz_protocol.py (coverage-guided, libFuzzer) finds nothing in ~6 s from its seeds.
    Skipped where atheris is not installed (pip install -e ".[fuzz]"; x86-64 wheels for CPython 3.11-3.13)."""
    pytest.importorskip("atheris")
    seconds = int(os.environ.get("TASKPOOL_FUZZ_SECONDS", "6"))
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "fuzz_protocol.py"), "--seconds", str(seconds),
         "--artifacts", str(tmp_path), "--corpus", str(tmp_path / "corpus")],
        capture_output=True, text=True, timeout=seconds + 120, cwd=tmp_path,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    runs = re.search(r"Done (\d+) runs", output)
    assert runs and int(runs.group(1)) > 1_000, output[-2000:]
