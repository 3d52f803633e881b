"""Wire protocol: framing, the incremental decoder, field checks and JSON-compatibility."""

from __future__ import annotations

import datetime as dt
import math
import re
import struct

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taskpool import protocol
from taskpool.errors import InvalidArguments, ProtocolError
from taskpool.json_values import check_json_compatible
from taskpool.protocol import (
    DEFAULT_MAX_FRAME,
    Accepted,
    Adopt,
    Cancel,
    Decoder,
    Done,
    Error,
    Hello,
    Message,
    Progress,
    Pull,
    Query,
    QueryMany,
    Ready,
    Record,
    Recorded,
    Run,
    Stats,
    StatsRequest,
    Submit,
    TaskInfo,
    TaskInfos,
    Welcome,
    encode,
)

# One instance of every message class, with non-default values where there are options.
SAMPLES: list[Message] = [
    Hello("taskpool", 1),
    Submit("t1", "mod.add", [1, 2.5, "x", None, True, [3]], {"k": {"n": [1, {}]}}),
    Submit("t2", "mod.add", [], {}, priority=-5, run_after=1700000000.25, max_attempts=4, timeout=2.5, queue="q"),
    Query("t1"),
    Query("t1", 2.5),
    Cancel("t1"),
    StatsRequest(),
    QueryMany(["t1", "t2"]),
    TaskInfos([["t1", "mod.add", "READY", 0, None, None, None, [], []], None]),
    Welcome(1, 4242, "sqlite", "/srv/app/spool"),
    Accepted("t1"),
    TaskInfo("t1", "mod.add", "SUCCESSFUL", 2, 100.0, "done", {"answer": [42]}, [{"type": "E", "message": "m"}], [11, 12]),
    TaskInfo("t1", "mod.add", "READY", 0, None, None, None, [], []),
    Stats({"workers": [{"pid": 1}], "queue": {"ready": 0}}),
    Error("queue_full", "too many", "t1"),
    Error("bad_frame", "no task id"),
    Run("t1", "mod.add", [1, 2], {"z": None}, 1),
    Ready(99, 2, {"mod.add": {"priority": 0, "queue": "default", "max_attempts": 3, "timeout": None}}),
    Progress("t1", 40.5, "rendering"),
    Progress("t1", 10),
    Done("t1", True, [1, "two"], None, 123456),
    Done("t1", False, None, {"type": "builtins.ValueError", "message": "bad", "traceback": "tb"}, 0),
    Done("t1", False, None, {"type": "builtins.OSError", "message": "again", "traceback": ""}, 0, 1.5),
    Submit("t3", "mod.add", [], {}, stored=True),
    Record(7, [{"task_id": "t1", "status": "RUNNING", "errors": []}]),
    Recorded(7),
    Pull(100, 1700000060.0),
    Pull(5, 1700000060.0, True),
    Adopt([{"task_id": "t1", "args": [1]}], {"requeued": 1, "failed": 0, "gone": ["abc"]}),
]


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def packed_frame(values: list) -> bytes:
    return frame(msgpack.packb(values, use_bin_type=True))


def decode_all(data: bytes, max_frame: int = DEFAULT_MAX_FRAME) -> list[Message]:
    return list(Decoder(max_frame).feed(data))


# -- round trips and framing -------------------------------------------------


def test_samples_cover_every_registered_message_class():
    assert {type(m) for m in SAMPLES} == set(protocol._BY_CODE.values())


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips(msg):
    data = encode(msg)
    assert struct.unpack(">I", data[:4])[0] == len(data) - 4
    decoder = Decoder()
    (decoded,) = decoder.feed(data)
    assert type(decoded) is type(msg)
    assert decoded == msg
    assert decoder.pending == 0


def test_tuple_arguments_arrive_as_lists():
    (decoded,) = Decoder().feed(encode(Run("t", "n", (1, (2, 3)), {"a": (4,)}, 1)))  # type: ignore[arg-type]
    assert decoded.args == [1, [2, 3]]
    assert decoded.kwargs == {"a": [4]}


def test_stream_split_at_every_offset_yields_the_same_messages():
    stream = b"".join(encode(m) for m in SAMPLES)
    for cut in range(len(stream) + 1):
        decoder = Decoder()
        got = list(decoder.feed(stream[:cut]))
        got += list(decoder.feed(stream[cut:]))
        assert got == SAMPLES, f"cut at {cut}"
        assert decoder.pending == 0


def test_stream_fed_one_byte_at_a_time_yields_the_same_messages():
    stream = b"".join(encode(m) for m in SAMPLES)
    decoder = Decoder()
    got: list[Message] = []
    for index in range(len(stream)):
        got += decoder.feed(stream[index : index + 1])
    assert got == SAMPLES
    assert decoder.pending == 0


def test_pending_counts_the_bytes_of_an_incomplete_frame():
    data = encode(Cancel("abc"))
    decoder = Decoder()
    assert list(decoder.feed(data[:-1])) == []
    assert decoder.pending == len(data) - 1
    assert list(decoder.feed(data[-1:])) == [Cancel("abc")]
    assert decoder.pending == 0


def test_frame_of_exactly_max_frame_bytes_is_accepted():
    data = encode(Stats({"blob": "x" * 100}))
    assert decode_all(data, max_frame=len(data) - 4) == [Stats({"blob": "x" * 100})]


def test_oversized_length_header_is_refused_from_the_header_alone():
    decoder = Decoder(max_frame=100)
    with pytest.raises(ProtocolError, match="exceeds"):
        list(decoder.feed(struct.pack(">I", 101)))


def test_oversized_header_is_refused_when_its_last_byte_arrives():
    decoder = Decoder(max_frame=1000)
    header = struct.pack(">I", 2**32 - 1)
    assert list(decoder.feed(header[:3])) == []
    with pytest.raises(ProtocolError):
        list(decoder.feed(header[3:]))


def test_frame_one_byte_over_max_frame_is_refused():
    data = encode(Stats({"blob": "x" * 100}))
    with pytest.raises(ProtocolError):
        decode_all(data[:4], max_frame=len(data) - 5)


# -- bad payloads ------------------------------------------------------------

HELLO = [1, "taskpool", 1]

BAD_PAYLOADS = {
    # garbage
    "empty payload": b"",
    "never-used byte 0xc1": b"\xc1",
    "truncated array": b"\x93\x01\xa1",
    "trailing bytes after the array": msgpack.packb([5]) + b"\x00",
    "random bytes": bytes(range(200, 256)),
    # not an array
    "nil": msgpack.packb(None),
    "int": msgpack.packb(1),
    "str": msgpack.packb("taskpool"),
    "map": msgpack.packb({"type": 1}),
    "empty array": msgpack.packb([]),
    "array starting with a str": msgpack.packb(["1", "taskpool", 1]),
    "array starting with a bool": msgpack.packb([True, "taskpool", 1]),
    "array starting with a float": msgpack.packb([1.0, "taskpool", 1]),
    # unknown type codes
    "unknown type code 0": msgpack.packb([0]),
    "unknown type code 99": msgpack.packb([99, "x"]),
    "unknown type code -1": msgpack.packb([-1]),
    "unknown type code 2**64-1": msgpack.packb([2**64 - 1]),
    # wrong field counts
    "Hello with one field": msgpack.packb([1, "taskpool"]),
    "Hello with three fields": msgpack.packb([*HELLO, 0]),
    "StatsRequest with a field": msgpack.packb([5, None]),
    "Submit without its optional fields": msgpack.packb([2, "t", "n", [], {}]),
    "Error without task_id": msgpack.packb([14, "bad_frame", "boom"]),
    # wrong field types
    "Hello.version bool": msgpack.packb([1, "taskpool", True]),
    "Hello.version float": msgpack.packb([1, "taskpool", 1.0]),
    "Hello.version str": msgpack.packb([1, "taskpool", "1"]),
    "Hello.magic bytes": msgpack.packb([1, b"taskpool", 1], use_bin_type=True),
    "Cancel.task_id int": msgpack.packb([4, 7]),
    "Cancel.task_id nil": msgpack.packb([4, None]),
    "Submit.args map": msgpack.packb([2, "t", "n", {}, {}, None, None, None, None, None]),
    "Submit.kwargs array": msgpack.packb([2, "t", "n", [], [], None, None, None, None, None]),
    "Submit.priority float": msgpack.packb([2, "t", "n", [], {}, 1.5, None, None, None, None]),
    "Submit.priority bool": msgpack.packb([2, "t", "n", [], {}, True, None, None, None, None]),
    "Submit.run_after bool": msgpack.packb([2, "t", "n", [], {}, None, False, None, None, None]),
    "Submit.max_attempts float": msgpack.packb([2, "t", "n", [], {}, None, None, 3.0, None, None]),
    "Submit.timeout str": msgpack.packb([2, "t", "n", [], {}, None, None, None, "5", None]),
    "Submit.queue int": msgpack.packb([2, "t", "n", [], {}, None, None, None, None, 1]),
    "Query.wait bool": msgpack.packb([3, "t", True]),
    "Query.wait nil": msgpack.packb([3, "t", None]),
    "Welcome.pid float": msgpack.packb([10, 1, 4242.0]),
    "Run.attempt bool": msgpack.packb([20, "t", "n", [], {}, True]),
    "Ready.tasks array": msgpack.packb([30, 1, 1, []]),
    "Progress.percent nil": msgpack.packb([31, "t", None, None]),
    "Progress.percent bool": msgpack.packb([31, "t", True, None]),
    "Done.ok int": msgpack.packb([32, "t", 1, None, None, 0]),
    "Done.rss float": msgpack.packb([32, "t", True, None, None, 0.0]),
    "Done.error array": msgpack.packb([32, "t", False, None, [], 0]),
    "TaskInfo.attempts bool": msgpack.packb([12, "t", "n", "READY", False, None, None, None, [], []]),
    "Error.task_id int": msgpack.packb([14, "bad_frame", "boom", 3]),
    # msgpack extension types (ext_hook)
    "ext type 5 in Stats.data": msgpack.packb([13, {"x": msgpack.ExtType(5, b"abc")}]),
    "ext type 127 in Submit.args": msgpack.packb([2, "t", "n", [msgpack.ExtType(127, b"")], {}, None, None, None, None, None]),
    "ext type -2 in Done.result": b"\x96\x20\xa1t\xc3\xd4\xfex\xc0\x00",  # fixext1, type -2
    "ext type 1 as type code": msgpack.packb([msgpack.ExtType(1, b"\x01")]),
    "malformed timestamp ext": b"\x92\x0d\x81\xa1x\xd4\xff\x01",  # fixext1, type -1, 1 byte
    # containers that claim more entries than the payload could hold
    "map32 of 2**32-1 entries, no body": b"\xdf\xff\xff\xff\xff",
    "array32 of 2**32-1 entries, no body": b"\xdd\xff\xff\xff\xff",
    "nested map32 of 2**32-1 entries": b"\x92\x0d\xdf\xff\xff\xff\xff",
    "nested array32 in Submit.args": b"\x9a\x02\xa1t\xa1n\xdd\xff\xff\xff\xff",
    "str32 of 2**32-1 bytes, no body": b"\x92\x04\xdb\xff\xff\xff\xff",
    "bin32 of 2**32-1 bytes, no body": b"\x92\x04\xc6\xff\xff\xff\xff",
    "array32 headers, each within the payload, nested past it": (b"\xdd" + struct.pack(">I", 300)) * 100 + b"\xc0" * 100,
    "map16 headers nested past the payload": b"\x92\x0d" + (b"\xde\x01\x00\xa0") * 100 + b"\xa0" * 600,
    # invalid UTF-8 in str fields
    "invalid UTF-8 in Cancel.task_id": b"\x92\x04\xa2\xff\xfe",
    "invalid UTF-8 in Hello.magic": b"\x93\x01\xa2\xc3\x28\x01",
    "invalid UTF-8 in a map key": b"\x92\x0d\x81\xa1\xff\xc0",
    "lone surrogate in str": b"\x92\x04\xa3\xed\xa0\x80",
    # non-str map keys
    "int map key": msgpack.packb([13, {1: 2}]),
    # deep nesting
    "arrays nested 5000 deep": b"\x91" * 5000 + b"\xc0",
    "arrays nested 200000 deep": b"\x91" * 200_000 + b"\xc0",
    "maps nested 5000 deep": b"\x92\x0d" + b"\x81\xa1k" * 5000 + b"\xc0",
}


@pytest.mark.parametrize("payload", BAD_PAYLOADS.values(), ids=BAD_PAYLOADS.keys())
def test_bad_payload_raises_protocol_error(payload):
    with pytest.raises(ProtocolError):
        decode_all(frame(payload))


@pytest.mark.parametrize("payload", BAD_PAYLOADS.values(), ids=BAD_PAYLOADS.keys())
def test_bad_payload_raises_protocol_error_from_decode_payload(payload):
    with pytest.raises(ProtocolError):
        protocol.decode_payload(payload)


def test_msgpack_timestamp_extension_is_refused():
    # Extension type -1 (msgpack's timestamp) is an extension type like any other:
    # nothing but JSON values may come off the wire.
    payload = msgpack.packb([2, "t", "n", [msgpack.Timestamp(1, 0)], {}, None, None, None, None, None])
    with pytest.raises(ProtocolError):
        decode_all(frame(payload))


def test_good_frames_before_a_bad_one_are_yielded_first():
    good = [Hello("taskpool", 1), Cancel("a")]
    data = b"".join(encode(m) for m in good) + frame(msgpack.packb([99])) + encode(Cancel("after"))
    got: list[Message] = []
    with pytest.raises(ProtocolError, match="unknown message type 99"):
        for msg in Decoder().feed(data):
            got.append(msg)
    assert got == good


def test_good_frames_before_an_oversized_header_are_yielded_first():
    good = encode(Accepted("a"))
    got: list[Message] = []
    with pytest.raises(ProtocolError):
        for msg in Decoder(max_frame=64).feed(good + struct.pack(">I", 65)):
            got.append(msg)
    assert got == [Accepted("a")]


# -- container claims -----------------------------------------------------------
# decode_payload refuses a payload whose array and map headers claim more elements in total than it
# has bytes, before msgpack preallocates them (docs/protocol.md, "Limits").


@pytest.mark.parametrize(
    ("payload", "refused"),
    [
        (b"\xdc\x00\x10" + b"\xc0" * 13, False),  # 16 claimed in 16 bytes: left to msgpack (cut short)
        (b"\xdc\x00\x11" + b"\xc0" * 13, True),  # 17 in 16
        (b"\xdd\x00\x00\x00\x10" + b"\xc0" * 11, False),
        (b"\xde\x00\x10" + b"\xa0" * 29, False),  # a map entry counts twice: 32 in 32
        (b"\xde\x00\x10" + b"\xa0" * 28, True),  # 32 in 31
        (b"\xdf\x00\x00\x00\x10" + b"\xa0" * 26, True),  # 32 in 31
        ((b"\xdd\x00\x00\x00\x10") * 4, True),  # 64 in 20: each header alone is within the payload
        (b"\x91" * 20 + b"\xdc\x00\x18", True),  # 24 in 23
        # headers of 15 entries or fewer preallocate no more than a fixarray or fixmap: not counted
        (b"\xdc\x00\x0f" * 10, False),
        (b"\xde\x00\x0f" * 10, False),
        # header bytes inside a str body are skipped with it, short or long
        (b"\x92\x04\xd9\x05" + b"\xdd\xff\xff\xff\xff" + b"\xc0", False),
        (b"\x92\x04\xd9\x28" + b"\xdd\xff\xff\xff\xff" * 8 + b"\xc0", False),
    ],
)
def test_claims_are_refused_when_they_add_up_to_more_than_the_payload(payload, refused):
    size = len(payload)
    claims_message = rf"containers claim at least \d+ elements in a payload of {size} bytes"
    with pytest.raises(ProtocolError) as info:
        protocol.decode_payload(payload)
    assert bool(re.search(claims_message, str(info.value))) is refused, str(info.value)


def test_large_and_non_canonical_containers_within_their_bytes_decode():
    args = [list(range(300)), {f"k{i}": i for i in range(40)}, "x" * 70_000]
    assert protocol.decode_payload(encode(Submit("t", "n", args, {}))[4:]).args == args
    # array32 and map32 forms of small containers (msgpack never writes them, but they are valid)
    payload = b"\x9c\x02\xa1t\xa1n\xdd\x00\x00\x00\x02\x01\xdf\x00\x00\x00\x01\xa1k\xc0\x80" + msgpack.packb(None) * 5
    payload += msgpack.packb(False) + msgpack.packb(True)
    assert protocol.decode_payload(payload).args == [1, {"k": None}]


def test_header_bytes_inside_strings_are_skipped_not_counted():
    # U+077F is 0xdd 0xbf in UTF-8: an array32 lead byte on every other byte of the str body
    text = "\u077f" * 40
    message = Stats({"s": text, "l": list(range(100)), "e": "\u077f\u077f\u077f"})
    assert b"\xdd\xbf\xdd\xbf\xdd" in encode(message)
    assert protocol.decode_payload(encode(message)[4:]) == message


def test_a_refused_claim_says_so_through_the_decoder():
    payload = (b"\xdd" + struct.pack(">I", 1000)) * 100 + b"\xc0" * 500
    with pytest.raises(ProtocolError, match="containers claim at least 2000 elements in a payload of 1000 bytes"):
        decode_all(frame(payload))


# -- JSON compatibility and encoding ------------------------------------------


class Thing:
    pass


def nested_lists(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


NOT_JSON = {
    "bytes": b"x",
    "bytearray": bytearray(b"x"),
    "set": {1},
    "frozenset": frozenset(),
    "object": object(),
    "custom object": Thing(),
    "complex": 1j,
    "datetime": dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
    "int key": {1: "a"},
    "None key": {None: "a"},
    "tuple key": {(1, 2): "a"},
    "nan": math.nan,
    "inf": math.inf,
    "-inf": -math.inf,
    "2**64": 2**64,
    "-(2**63)-1": -(2**63) - 1,
    "huge int": 10**40,
    "bytes nested in a list": [1, [2, b"x"]],
    "set nested in a dict": {"a": {"b": {1, 2}}},
    "nan nested in a tuple": (1.0, (math.nan,)),
    "lists nested 150 deep": nested_lists(150),
}

JSON_OK = {
    "None": None,
    "True": True,
    "False": False,
    "empty str": "",
    "unicode str": "é✓\U0001f600",
    "zero": 0,
    "2**64-1": 2**64 - 1,
    "-(2**63)": -(2**63),
    "float": 1.5,
    "negative zero": -0.0,
    "empty list": [],
    "empty tuple": (),
    "tuple": (1, "a", None),
    "empty dict": {},
    "nested": {"a": [1, 2.5, {"b": (None, True, ["c"])}], "": {}},
    "lists nested 50 deep": nested_lists(50),
}


@pytest.mark.parametrize("value", NOT_JSON.values(), ids=NOT_JSON.keys())
def test_check_json_compatible_rejects(value):
    with pytest.raises(InvalidArguments):
        check_json_compatible(value, "args")


@pytest.mark.parametrize("value", JSON_OK.values(), ids=JSON_OK.keys())
def test_check_json_compatible_accepts(value):
    assert check_json_compatible(value, "args") is None


def test_check_json_compatible_names_where_the_bad_value_is():
    with pytest.raises(InvalidArguments, match=r"kwargs\['a'\]\[1\]"):
        check_json_compatible({"a": [1, {2}]}, "kwargs")


SHARED_SET = {1}
SHARED_LIST = [1, b"x"]

BAD_VALUE_MESSAGES = [
    ({"a": [1, {2}]}, "kwargs", "kwargs['a'][1] is a set, not a JSON-compatible value"),
    ([0, 1, 2**64], "args", "args[2]: integer 18446744073709551616 does not fit in 64 bits"),
    ([1.0, [math.nan]], "args", "args[1][0]: nan is not a JSON number"),
    ({"a": {3: 1}}, "kwargs", "kwargs['a']: key 3 is not a string"),
    ({"k": {"deep": [None, {"z": -math.inf}]}}, "result", "result['k']['deep'][1]['z']: -inf is not a JSON number"),
    ((1, (2, Thing())), "args", "args[1][1] is a Thing, not a JSON-compatible value"),
    (nested_lists(101), "args", "args" + "[0]" * 101 + " is nested more than 100 levels deep"),
    ({"a": nested_lists(100)}, "kwargs", "kwargs['a']" + "[0]" * 100 + " is nested more than 100 levels deep"),
    # the same object twice: the path names its first place
    ([[], SHARED_SET, SHARED_SET], "args", "args[1] is a set, not a JSON-compatible value"),
    ([SHARED_LIST, SHARED_LIST], "args", "args[0][1] is a bytes, not a JSON-compatible value"),
    ([{}] * 100_000 + [[1, {"x": b"y"}]], "args", "args[100000][1]['x'] is a bytes, not a JSON-compatible value"),
]


@pytest.mark.parametrize(("value", "where", "message"), BAD_VALUE_MESSAGES, ids=[m for _, _, m in BAD_VALUE_MESSAGES])
def test_check_json_compatible_messages_name_the_first_bad_value(value, where, message):
    with pytest.raises(InvalidArguments) as info:
        check_json_compatible(value, where)
    assert str(info.value) == message


def test_decoded_bad_values_are_named_in_the_protocol_error():
    payload = msgpack.packb([2, "t", "n", [1, [2, msgpack.Timestamp(1, 0)]], {}, None, None, None, None, None, False, True])
    with pytest.raises(ProtocolError) as info:
        protocol.decode_payload(payload)
    assert str(info.value) == "Submit.args[1][1] is a Timestamp, not a JSON-compatible value"
    payload = msgpack.packb([13, {"a": [1, {"b": b"x"}]}], use_bin_type=True)
    with pytest.raises(ProtocolError) as info:
        protocol.decode_payload(payload)
    assert str(info.value) == "Stats.data['a'][1]['b'] is a bytes, not a JSON-compatible value"


def test_invalid_arguments_is_a_type_error():
    with pytest.raises(TypeError):
        check_json_compatible({1}, "args")


UNENCODABLE = {
    "set": {1, 2},
    "object": object(),
    "custom object": Thing(),
    "complex": 2j,
    "naive datetime": dt.datetime(2024, 1, 1),
    "2**64": 2**64,
    "-(2**63)-1": -(2**63) - 1,
    "set nested in a dict": {"a": [{"b"}]},
}


@pytest.mark.parametrize("value", UNENCODABLE.values(), ids=UNENCODABLE.keys())
def test_encode_raises_invalid_arguments_for_unencodable_values(value):
    with pytest.raises(InvalidArguments):
        encode(Submit("t", "n", [value], {}))
    with pytest.raises(InvalidArguments):
        encode(Done("t", True, value, None, 0))


def test_encode_raises_invalid_arguments_for_too_deep_nesting():
    with pytest.raises(InvalidArguments):
        encode(Stats({"deep": nested_lists(2000)}))


# -- properties ------------------------------------------------------------------

CODES = sorted(protocol._BY_CODE)
MAX_FRAME = 64

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
# Payloads that look like messages: a real type code and a few JSON-ish or binary fields.
message_like = st.builds(
    lambda code, rest: msgpack.packb([code, *rest], use_bin_type=True),
    st.sampled_from(CODES),
    st.lists(json_values | st.binary(max_size=6), max_size=10),
)
valid_frames = st.sampled_from([encode(m) for m in SAMPLES if len(encode(m)) - 4 <= MAX_FRAME])
frames = st.lists(
    (st.binary(max_size=MAX_FRAME + 8) | message_like).map(frame) | valid_frames, min_size=1, max_size=4
).map(b"".join)
wire_bytes = st.binary(max_size=300) | frames | st.tuples(frames, st.binary(max_size=20)).map(b"".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=wire_bytes, cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=8))
def test_arbitrary_bytes_yield_messages_or_protocol_error(data, cuts):
    decoder = Decoder(max_frame=MAX_FRAME)
    points = sorted({min(cut, len(data)) for cut in cuts})
    bounds = [0, *points, len(data)]
    try:
        for start, end in zip(bounds, bounds[1:], strict=False):
            for msg in decoder.feed(data[start:end]):
                assert isinstance(msg, Message)
    except ProtocolError:
        return
    assert decoder.pending <= MAX_FRAME + 4


def assert_same(got, expected):
    """Equal values of exactly the same types (so True is not 1 and 1.0 is not 1)."""
    assert type(got) is type(expected), (got, expected)
    if isinstance(expected, list):
        assert len(got) == len(expected)
        for g, e in zip(got, expected, strict=True):
            assert_same(g, e)
    elif isinstance(expected, dict):
        assert list(got) == list(expected)
        for key in expected:
            assert_same(got[key], expected[key])
    elif isinstance(expected, float):
        assert got == expected and math.copysign(1.0, got) == math.copysign(1.0, expected)
    else:
        assert got == expected


@settings(max_examples=250, deadline=None)
@given(args=st.lists(json_values, max_size=4), kwargs=st.dictionaries(st.text(max_size=8), json_values, max_size=4))
def test_json_like_values_round_trip_exactly_inside_submit(args, kwargs):
    check_json_compatible(args, "args")
    check_json_compatible(kwargs, "kwargs")
    (decoded,) = Decoder().feed(encode(Submit("task-id", "mod.fn", args, kwargs)))
    assert isinstance(decoded, Submit)
    assert_same(decoded.args, args)
    assert_same(decoded.kwargs, kwargs)


def test_a_failed_encode_leaves_nothing_behind_for_the_next_frame():
    from taskpool.errors import InvalidArguments
    from taskpool.protocol import Accepted, Run, decode_payload, encode

    with pytest.raises(InvalidArguments):
        encode(Run("t1", "mod.task", [1, 2, object()], {}, 1))
    frame = encode(Accepted("t2"))
    assert decode_payload(frame[4:]) == Accepted("t2")


def test_threads_encoding_at_once_each_get_their_own_frames():
    import threading

    from taskpool.protocol import Run, decode_payload, encode

    bad: list[str] = []

    def work(n: int) -> None:
        for i in range(300):
            msg = Run(f"t{n}-{i}", "mod.task", [n, i, "x" * (i % 50)], {"n": n}, 1)
            if decode_payload(encode(msg)[4:]) != msg:
                bad.append(msg.task_id)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert bad == []


def test_only_untrusted_decoders_walk_container_claims(monkeypatch):
    from taskpool.protocol import Decoder, Record, encode

    walked: list[int] = []
    monkeypatch.setattr(protocol, "check_claims", lambda payload: walked.append(len(payload)))
    frame = encode(Record(1, [{"task_id": f"t{i}"} for i in range(20)]))  # an array16 header: 0xdc
    assert list(Decoder(1 << 20, trusted=True).feed(frame)) == [Record(1, [{"task_id": f"t{i}"} for i in range(20)])]
    assert walked == []
    assert len(list(Decoder(1 << 20).feed(frame))) == 1
    assert walked == [len(frame) - 4]


def test_messages_built_in_python_keep_dataclass_behaviour():
    from taskpool.protocol import Done, Submit
    from taskpool.records import replace

    msg = Submit("t", "n", [1], {}, queue="q")
    assert (msg.priority, msg.queue, msg.stored, msg.reply) == (None, "q", False, True)
    assert msg == Submit(task_id="t", name="n", args=[1], kwargs={}, queue="q") and hash(Done("a", True, 1, None, 0))
    with pytest.raises(TypeError):
        Submit("t", "n", [1])  # kwargs missing
    with pytest.raises(TypeError):
        Done("a", True, 1, None, 0, None, "extra")
    with pytest.raises(AttributeError, match="frozen"):
        msg.name = "other"
    with pytest.raises(AttributeError, match="frozen"):
        del msg.name
    assert replace(msg, reply=False) == Submit("t", "n", [1], {}, queue="q", reply=False)
    assert not hasattr(msg, "__dict__")  # slots only


def test_a_packer_that_packed_a_large_frame_is_not_kept():
    from taskpool.protocol import PACKER_KEEP, Run, _packer, decode_payload, encode

    small = _packer()
    assert _packer() is small  # reused between frames
    big = Run("t", "mod.task", ["x" * (PACKER_KEEP + 10)], {}, 1)
    assert decode_payload(encode(big)[4:]) == big
    assert _packer() is not small  # its buffer would have stayed at the large frame's size


@pytest.mark.parametrize("msg", [m for m in SAMPLES if type(m).__name__ in ("Run", "TaskInfo", "Done", "Accepted")],
                         ids=lambda m: type(m).__name__)
def test_encode_fields_gives_the_frame_encode_gives(msg):
    values = [getattr(msg, name) for name in protocol.field_names(type(msg))]
    assert protocol.encode_fields(type(msg), *values) == protocol.encode(msg)


def test_encode_fields_refuses_an_unencodable_value_clearly():
    with pytest.raises(InvalidArguments, match="cannot encode Run"):
        protocol.encode_fields(protocol.Run, "t", "n", [object()], {}, 1)


@pytest.mark.parametrize("value", [b"", b"x", [b""], {"k": b""}], ids=repr)
def test_bytes_in_an_any_field_are_refused_even_when_empty(value):
    payload = msgpack.packb([protocol.Done.type_code, "t", True, value, None, 0, None], use_bin_type=True)
    with pytest.raises(ProtocolError, match="Done.result"):
        protocol.decode_payload(payload)


@pytest.mark.parametrize("value", [None, False, 0, 0.0, "", [], {}], ids=repr)
def test_falsy_json_values_in_an_any_field_decode(value):
    payload = msgpack.packb([protocol.Done.type_code, "t", True, value, None, 0, None], use_bin_type=True)
    assert protocol.decode_payload(payload).result == value
