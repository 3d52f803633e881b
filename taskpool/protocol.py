"""Wire protocol: message types, framing and an incremental decoder. No I/O here.

Wire format, version 1 (docs/protocol.md has the full table)::

    frame   := length:uint32 big-endian  payload:length bytes
    payload := msgpack array [type_code:int, field1, field2, ...]

A connection opens with the client's ``Hello("taskpool", PROTOCOL_VERSION)``; the
supervisor answers ``Welcome`` or an ``Error`` and closes. Workers speak over a
socketpair made at fork and skip the handshake: their first frame is ``Ready``.

Limits are enforced while decoding, before any allocation they would cost:
a frame longer than ``max_frame`` is refused from its 4-byte header alone, and
a payload whose array and map headers claim more elements in total than it has
bytes is refused before msgpack preallocates them. Only the fixed table of
message types below can be decoded; nothing read off the wire is imported or
called.
"""

from __future__ import annotations

import math
import struct
import threading
from collections.abc import Callable, Iterator

import msgpack

from .errors import InvalidArguments, ProtocolError
from .json_values import first_bad
from .msgpack_claims import check_claims
from .records import field_names, record

TYPE_CHECKING = False  # typing stays unimported at run time (docs/performance.md, idle RSS)
if TYPE_CHECKING:
    from typing import Any, ClassVar

PROTOCOL_VERSION = 1
MAGIC = "taskpool"
DEFAULT_MAX_FRAME = 4 * 1024 * 1024
HEADER = struct.Struct(">I")

#: Error codes that may cross the wire (docs/protocol.md says when each is sent).
ERROR_CODES = frozenset(
    {
        "bad_frame",
        "bad_version",
        "unknown_task",
        "invalid_arguments",
        "not_found",
        "forbidden",
        "queue_full",
        "shutting_down",
        "boot_failed",
    }
)

#: Task statuses, named as Django's TaskResultStatus names them.
READY, RUNNING, SUCCESSFUL, FAILED, CANCELLED = (
    "READY",
    "RUNNING",
    "SUCCESSFUL",
    "FAILED",
    "CANCELLED",
)
FINAL_STATUSES = frozenset({SUCCESSFUL, FAILED, CANCELLED})
STATUSES = frozenset({READY, RUNNING}) | FINAL_STATUSES

_NUMBER = (int, float)
_OPT_NUMBER = (int, float, type(None))
_OPT_STR = (str, type(None))
_OPT_INT = (int, type(None))
_OPT_DICT = (dict, type(None))
_ANY = (object,)


class Message:
    """Base of all frames. Subclasses are frozen records (taskpool.records)."""

    __slots__ = ()
    type_code: ClassVar[int]
    _types: ClassVar[tuple[tuple[type, ...], ...]]
    _record_values: ClassVar[Any]  # the field values as a tuple (records.record)


_BY_CODE: dict[int, type[Message]] = {}
_BUILDERS: dict[int, Callable[[list], Message]] = {}


def message(code: int, *types: tuple[type, ...]):
    """Register a message class under ``code`` with the accepted type of each field."""

    def register(cls: type) -> type:
        cls = record(cls, frozen=True)
        names = field_names(cls)
        if len(names) != len(types):
            raise AssertionError(f"{cls.__name__}: {len(names)} fields, {len(types)} types")
        cls.type_code = code
        cls._types = types
        _BY_CODE[code] = cls
        return cls

    return register


# -- client -> supervisor ---------------------------------------------------


@message(1, (str,), (int,))
class Hello(Message):
    magic: str
    version: int


@message(2, (str,), (str,), (list,), (dict,), _OPT_INT, _OPT_NUMBER, _OPT_INT, _OPT_NUMBER, _OPT_STR, (bool,), (bool,))
class Submit(Message):
    """A new task. Options left None take the task's registered defaults."""

    task_id: str
    name: str
    args: list
    kwargs: dict
    priority: int | None = None
    run_after: float | None = None  # wall-clock epoch seconds
    max_attempts: int | None = None
    timeout: float | None = None
    queue: str | None = None
    stored: bool = False  # the client already wrote the READY row to the store
    reply: bool = True  # False: no Accepted; a refusal goes in the stored row (durable store), else is answered

    def without_reply(self) -> Submit:
        return Submit(self.task_id, self.name, self.args, self.kwargs, self.priority, self.run_after,
                      self.max_attempts, self.timeout, self.queue, self.stored, False)


@message(3, (str,), _NUMBER)
class Query(Message):
    """Ask for a task's state; with ``wait`` > 0 the reply comes when it is final
    or when ``wait`` seconds have passed, whichever is first."""

    task_id: str
    wait: float = 0.0


@message(4, (str,))
class Cancel(Message):
    task_id: str


@message(5)
class StatsRequest(Message):
    pass


@message(6, (list,))
class QueryMany(Message):
    """The current state of many tasks at once (no wait): one round trip for a batch of
    results. Answered with ``TaskInfos`` in the same order."""

    task_ids: list


MAX_QUERY_MANY = 5000  # ids in one QueryMany


# -- supervisor -> client ---------------------------------------------------


@message(10, (int,), (int,), (str,), (str,))
class Welcome(Message):
    version: int
    pid: int
    store: str  # the client must use the same store ("memory", "sqlite", "django")
    spool: str  # absolute spool path (where the sqlite store lives)


@message(11, (str,))
class Accepted(Message):
    task_id: str


@message(12, (str,), (str,), (str,), (int,), _OPT_NUMBER, _OPT_STR, _ANY, (list,), (list,))
class TaskInfo(Message):
    task_id: str
    name: str
    status: str
    attempts: int
    progress: float | None
    progress_message: str | None
    result: Any
    errors: list  # one error dict per failed attempt, oldest first
    worker_pids: list


@message(15, (list,))
class TaskInfos(Message):
    """One entry per id asked, in order: the ``TaskInfo`` fields as a list, or None for a
    task this supervisor does not hold. May stop short of the ids asked when the
    answers would not fit in one frame; the client asks again for the rest."""

    infos: list


@message(13, (dict,))
class Stats(Message):
    data: dict


@message(14, (str,), (str,), _OPT_STR)
class Error(Message):
    code: str
    message: str
    task_id: str | None = None


# -- supervisor <-> worker --------------------------------------------------


@message(20, (str,), (str,), (list,), (dict,), (int,))
class Run(Message):
    task_id: str
    name: str
    args: list
    kwargs: dict
    attempt: int


@message(30, (int,), (int,), (dict,))
class Ready(Message):
    """A worker booted; ``tasks`` maps each registered name to its default options
    (priority, queue, max_attempts, timeout)."""

    pid: int
    generation: int
    tasks: dict


@message(31, (str,), _NUMBER, _OPT_STR)
class Progress(Message):
    task_id: str
    percent: float
    message: str | None = None


@message(32, (str,), (bool,), _ANY, _OPT_DICT, (int,), _OPT_NUMBER)
class Done(Message):
    task_id: str
    ok: bool
    result: Any
    error: dict | None  # {"type": "pkg.mod.Class", "message": str, "traceback": str}
    rss: int  # worker RSS in bytes after the task, 0 when not measured
    retry_in: float | None = None  # the task asked for another attempt after this many seconds


# -- supervisor <-> recorder ------------------------------------------------


@message(40, (int,), (list,))
class Record(Message):
    """Task rows to write (every mutable column, latest state); one transaction."""

    seq: int
    rows: list


@message(41, (int,))
class Recorded(Message):
    """Every Record up to ``seq`` is committed."""

    seq: int


@message(42, (int,), _NUMBER, (bool,))
class Pull(Message):
    """Sweep the store and adopt up to ``limit`` unheld READY rows due before ``horizon``.

    ``release_mine``: first un-hold READY rows this supervisor holds (a recorder died
    between claiming rows and delivering them; the supervisor skips those it has)."""

    limit: int
    horizon: float
    release_mine: bool = False


@message(43, (list,), (dict,))
class Adopt(Message):
    """READY rows now held by this supervisor, and what the sweep found."""

    rows: list
    report: dict


# -- encoding ---------------------------------------------------------------


def _reject_value(value: object) -> None:
    raise InvalidArguments(f"{type(value).__name__} is not a JSON-compatible value")


_packers = threading.local()


def _packer() -> msgpack.Packer:
    """This thread's Packer: ``packb`` builds one per call, half the cost of a small frame.
    A Packer resets itself after a failed pack, and is not shared between threads."""
    try:
        return _packers.packer
    except AttributeError:
        _packers.packer = packer = msgpack.Packer(default=_reject_value, use_bin_type=True)
        return packer


PACKER_KEEP = 1 << 20  # a Packer never shrinks its buffer: one that packed more is replaced


def encode(msg: Message) -> bytes:
    """One frame: header and payload. Raises InvalidArguments for unencodable values."""
    return encode_fields(type(msg), *msg._record_values(msg))


def encode_fields(cls: type[Message], *values: Any) -> bytes:
    """The frame of ``cls(*values)``; the supervisor's hot path (``Run``, ``TaskInfo``) calls it
    directly, without making the message, as its values come from its own checked records."""
    try:
        payload = _packer().pack([cls.type_code, *values])
        if len(payload) > PACKER_KEEP:
            del _packers.packer  # its buffer grew to this frame's size and would stay so
    except (OverflowError, ValueError, TypeError) as exc:
        raise InvalidArguments(f"cannot encode {cls.__name__}: {exc}") from None
    return HEADER.pack(len(payload)) + payload


def encode_chunks(make: Callable[[list], Message], items: list, limit: int) -> list[tuple[list, bytes]]:
    """(items, frame) pairs: ``items`` split over as many messages as keep each frame
    under ``limit``. For the supervisor-recorder channel, where a batch of rows can
    outgrow one frame."""
    frame = encode(make(items))
    if len(frame) - 4 <= limit or len(items) <= 1:
        return [(items, frame)]
    half = len(items) // 2
    return encode_chunks(make, items[:half], limit) + encode_chunks(make, items[half:], limit)


# -- decoding ---------------------------------------------------------------


def _ext_hook(code: int, data: bytes) -> None:
    raise ProtocolError(f"msgpack extension type {code} is not allowed")


def _deep_check(value: Any, where: str) -> None:
    """Nested values too: no bytes, timestamps or other non-JSON types."""
    bad = first_bad(value, 0)
    if bad is not None:
        raise ProtocolError(where + "".join(reversed(bad[1:])) + bad[0])


def _field_test(var: str, accepted: tuple[type, ...]) -> str:
    """A Python expression true when ``var`` is acceptable for a field (the deep JSON
    check of containers is done apart). msgpack gives exact built-in types, so
    ``type(x) is int`` also keeps bool out, as the rules in ``_validate`` do."""
    if accepted is _ANY:
        return "True"
    tests = []
    for kind in accepted:
        if kind is type(None):
            tests.append(f"{var} is None")
        elif kind is float:
            tests.append(f"(type({var}) is float and isfinite({var}))")
        else:
            tests.append(f"type({var}) is {kind.__name__}")
    return " or ".join(tests)


def _compile_builder(cls: type, names: list[str], types: tuple) -> Callable[[list], Message]:
    """A decoder for one message class, generated once: per frame it checks each field
    with a plain expression and fills the frozen instance's slots directly, about five
    times faster than the generic loop. Any doubt falls back to ``_validate``, which
    raises the precise error."""
    count = len(names)
    variables = [f"a{i}" for i in range(count)]
    lines = ["def build(v):", f"    if len(v) != {count + 1}:", "        return validate(cls, v[1:])"]
    if count:
        lines.append(f"    {', '.join(['_', *variables])}, = v")
    for index, (var, accepted) in enumerate(zip(variables, types, strict=True)):
        lines += [f"    if not ({_field_test(var, accepted)}):", "        return validate(cls, v[1:])"]
        if accepted is _ANY or list in accepted or dict in accepted:
            where = f"{cls.__name__}.{names[index]}"
            # falsy values but b"" (None, [], {}, 0, "", False) are all JSON: no call for them
            lines.append(f"    if ({var} or type({var}) is bytes) and type({var}) is not str: deep({var}, {where!r})")
    lines.append("    obj = new(cls)")
    lines += [f"    set_{name}(obj, {var})" for name, var in zip(names, variables, strict=True)]
    lines.append("    return obj")
    namespace: dict[str, Any] = {
        "cls": cls, "new": object.__new__, "validate": _validate, "deep": _deep_check, "isfinite": math.isfinite,
        **{f"set_{name}": cls.__dict__[name].__set__ for name in names},
    }
    exec("\n".join(lines), namespace)  # noqa: S102 - our own source, built from the message table
    return namespace["build"]


def _compile_builders() -> None:
    for code, cls in _BY_CODE.items():
        _BUILDERS[code] = _compile_builder(cls, list(field_names(cls)), cls._types)


def decode_payload(payload: bytes | bytearray | memoryview, trusted: bool = False) -> Message:
    """Decode one frame's payload into a message, checking its type and fields.

    ``trusted``: the peer is this process's own supervisor (a worker's or the recorder's
    socketpair), so the claims walk, a guard against hostile clients, is skipped: in Python, it
    was a tenth of the recorder's time on frames of 500 rows.

    Only array16/32 and map16/32 headers (0xdc-0xdf) can claim more than 15 elements, so the
    claims are walked only when one of those bytes occurs (four memchr scans, ~90 ns for a
    small frame). bytes or bytearray is fastest: ``in`` on a memoryview compares byte by byte."""
    if not trusted and (0xDC in payload or 0xDD in payload or 0xDE in payload or 0xDF in payload):
        check_claims(payload)
    try:
        values = msgpack.unpackb(payload, raw=False, ext_hook=_ext_hook, timestamp=0)
    except ProtocolError:
        raise
    except (ValueError, msgpack.UnpackException, TypeError, OverflowError, RecursionError) as exc:
        raise ProtocolError(f"undecodable payload: {type(exc).__name__}: {exc}") from None
    if type(values) is not list or not values or type(values[0]) is not int:
        raise ProtocolError("payload is not an array starting with a message type code")
    build = _BUILDERS.get(values[0])
    if build is None:
        raise ProtocolError(f"unknown message type {values[0]}")
    return build(values)


def _validate(cls: type[Message], args: list) -> Message:
    """The generic field check: raises ProtocolError naming the first bad field."""
    types = cls._types
    if len(args) != len(types):
        raise ProtocolError(f"{cls.__name__} takes {len(types)} fields, got {len(args)}")
    for index, (value, accepted) in enumerate(zip(args, types, strict=True)):
        if accepted is _ANY or accepted is _OPT_DICT or list in accepted or dict in accepted:
            if accepted is not _ANY and not isinstance(value, accepted):
                raise ProtocolError(f"{cls.__name__}.{field_names(cls)[index]} has type {type(value).__name__}")
            _deep_check(value, f"{cls.__name__}.{field_names(cls)[index]}")
        elif not isinstance(value, accepted) or (type(value) is bool and bool not in accepted):
            raise ProtocolError(f"{cls.__name__}.{field_names(cls)[index]} has type {type(value).__name__}")
        elif type(value) is float and not math.isfinite(value):
            raise ProtocolError(f"{cls.__name__}.{field_names(cls)[index]} is {value}, not a finite number")
    return cls(*args)


class Decoder:
    """Accumulates bytes and yields whole messages; refuses oversized frames.

    Memory is bounded by ``max_frame`` plus one read: a frame's length is checked
    from its header before its body is buffered."""

    __slots__ = ("max_frame", "_buffer", "trusted")

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME, trusted: bool = False) -> None:
        self.max_frame = max_frame
        self._buffer = bytearray()
        self.trusted = trusted  # see decode_payload

    def feed(self, data: bytes | bytearray | memoryview) -> Iterator[Message]:
        """Add bytes; iterate over every message now complete (possibly none).

        Consume the iterator fully. A bad frame raises ProtocolError when reached,
        after the good frames before it have been yielded."""
        self._buffer += data
        return self._drain()

    def _drain(self) -> Iterator[Message]:
        buffer = self._buffer
        offset = 0
        try:
            while len(buffer) - offset >= 4:
                (length,) = HEADER.unpack_from(buffer, offset)
                if length > self.max_frame:
                    raise ProtocolError(f"frame of {length} bytes exceeds the {self.max_frame}-byte limit")
                end = offset + 4 + length
                if len(buffer) < end:
                    break
                # One copy (a bytearray), not a memoryview: a view stays alive in a ProtocolError's
                # traceback, and ``del buffer[:offset]`` below would then raise BufferError.
                payload = buffer[offset + 4 : end]
                offset = end
                yield decode_payload(payload, self.trusted)
        finally:
            del buffer[:offset]

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held; non-zero at EOF means a cut-off frame."""
        return len(self._buffer)


_compile_builders()
