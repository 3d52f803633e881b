"""Coverage-guided fuzzing of the wire decoder with atheris (libFuzzer), for issue 6.

    ./scripts/fuzz [--seconds 60] [--corpus DIR] [--artifacts DIR] [-- libFuzzer flags]
    python scripts/fuzz_protocol.py CRASH_FILE...        # replay saved inputs

tests/unit/test_protocol_fuzz.py generates inputs from a grammar (hypothesis); this harness
lets libFuzzer mutate bytes under coverage guidance of taskpool/protocol.py (msgpack's C
extension is a black box to it), starting from valid frames of every message type and the
hostile shapes of the tests. It checks the same contract: ``Decoder`` yields messages that
re-encode exactly, or raises ProtocolError; its buffer never holds more than one incomplete
frame between reads. Any other exception, an input slower than --timeout seconds, or RSS over
--rss-limit MB is a crash: libFuzzer saves the input under --artifacts for replay.

An input is: byte 0 picks how the rest becomes a stream (0: as is; 1: framed as one payload;
2: framed, between two valid frames), byte 1 how many cuts (0-4), then 2 bytes per cut
position, then the data. Reads are cut there, as a socket may cut them.
"""

from __future__ import annotations

import argparse
import math
import struct
import sys
import tempfile
import typing
from pathlib import Path
from types import NoneType, UnionType
from typing import Any

import atheris

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

with atheris.instrument_imports():
    from taskpool import protocol
    from taskpool.errors import ProtocolError
    from taskpool.records import field_names

MAX_FRAME = 64 * 1024
HEADER = struct.Struct(">I")


def frame(payload: bytes) -> bytes:
    return HEADER.pack(len(payload)) + payload


PING = frame(b"\x91\x05")  # StatsRequest: the valid frame around mode 2's payload


def same(a: Any, b: Any) -> bool:
    """Equal with exactly the same types all the way down (True is not 1, 1.0 is not 1)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, protocol.Message):
        return all(same(getattr(a, name), getattr(b, name)) for name in field_names(a))
    if type(a) is list:
        return len(a) == len(b) and all(map(same, a, b))
    if type(a) is dict:
        return list(a) == list(b) and all(same(a[key], b[key]) for key in a)
    if type(a) is float:
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    return a == b


def stream_and_cuts(data: bytes) -> tuple[bytes, list[int]]:
    if len(data) < 2:
        return data, []
    mode, count = data[0] % 3, data[1] % 5
    cuts = [int.from_bytes(data[2 + 2 * i : 4 + 2 * i], "big") for i in range(count)]
    body = data[2 + 2 * count :]
    if mode == 1:
        return frame(body), cuts
    if mode == 2:
        return PING + frame(body) + PING, cuts
    return body, cuts


def test_one_input(data: bytes) -> None:
    stream, cuts = stream_and_cuts(data)
    bounds = [0, *sorted({min(cut, len(stream)) for cut in cuts}), len(stream)]
    decoder = protocol.Decoder(MAX_FRAME)
    try:
        for start, end in zip(bounds, bounds[1:], strict=False):
            for msg in decoder.feed(stream[start:end]):
                if not isinstance(msg, protocol.Message):
                    raise AssertionError(f"decoder yielded {msg!r}")
                again = protocol.decode_payload(protocol.encode(msg)[4:])
                if not same(again, msg):
                    raise AssertionError(f"{msg!r} re-encodes as {again!r}")
            if decoder.pending > MAX_FRAME + 3:
                raise AssertionError(f"{decoder.pending} bytes buffered, limit {MAX_FRAME}")
    except ProtocolError:
        pass


# -- seeds ----------------------------------------------------------------------------

BASELINE: dict[Any, object] = {NoneType: None, Any: {"k": [1, 2.5, None]}, bool: True, str: "task", int: 7,
                               float: 1.5, list: ["a", 1], dict: {"k": "v"}}
HOSTILE = [
    b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff", b"\x92\x04\xdb\xff\xff\xff\xff", b"\x92\x04\xc6\xff\xff\xff\xff",
    b"\x91" * 2000 + b"\xc0", b"\x92\x0d" + b"\x81\xa1k" * 1500 + b"\xc0", b"\x92\x04\xa2\xff\xfe",
    b"\x92\x0d\x81\xa1\xff\xc0", b"\x92\x0d\x81\xa1k\xd4\x05\x00", b"\x92\x0d\x81\xa1k\xd6\xff\x00\x00\x00\x01",
    b"\x92\x0d\x81\xa1k\xc7\x0c\xff" + bytes(12), b"\x92\x0d\x81\xa1k\xc9\x00\x00\x00\x01\x05\x00",
    b"\x93\x01\xa8taskpool\xcf" + b"\xff" * 8, b"\x93\x01\xa8taskpool\xd3\x80" + bytes(7),
    b"\x93\x03\xa1t\xcb\x7f\xf8" + bytes(6), b"\x93\x03\xa1t\xc3", b"\x92\x63\xc0", b"\x91\xc1",
    (b"\xdd" + HEADER.pack(2000)) * 100 + b"\xc0" * 1500,
]


# The names protocol.py's annotations use; it imports typing only for type checkers.
TYPING_NAMES = {"Any": Any, "ClassVar": typing.ClassVar}


def seeds() -> list[bytes]:
    """A valid frame of every message type (as mode 0 and as mode 1) and the hostile shapes."""
    result = []
    for cls in protocol._BY_CODE.values():
        hints = typing.get_type_hints(cls, localns=TYPING_NAMES)
        values = []
        for name in field_names(cls):
            hint = hints[name]
            values.append(BASELINE[typing.get_args(hint)[0] if isinstance(hint, UnionType) else hint])
        encoded = protocol.encode(cls(*values))
        result += [b"\x00\x00" + encoded, b"\x01\x00" + encoded[4:], b"\x00\x02\x00\x03\x00\x07" + encoded * 2]
    result += [b"\x01\x00" + payload for payload in HOSTILE] + [b"\x02\x01\x00\x05" + payload for payload in HOSTILE]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=60, help="how long to fuzz (default 60)")
    parser.add_argument("--corpus", type=Path, help="corpus directory to grow and reuse (default: a fresh one)")
    parser.add_argument("--artifacts", type=Path, default=Path.cwd(), help="where crash inputs go (default: .)")
    parser.add_argument("--timeout", type=int, default=10, help="seconds one input may take (default 10)")
    parser.add_argument("--rss-limit", type=int, default=1024, help="MB of RSS that count as a crash (default 1024)")
    parser.add_argument("replay", nargs="*", help="saved inputs to run once, instead of fuzzing")
    argv = sys.argv[1:]
    ours, libfuzzer_flags = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    args = parser.parse_args(ours)
    flags = [f"-timeout={args.timeout}", f"-rss_limit_mb={args.rss_limit}", *libfuzzer_flags]
    if args.replay:
        atheris.Setup([sys.argv[0], *flags, *args.replay], test_one_input)
        atheris.Fuzz()
        return
    corpus = args.corpus or Path(tempfile.mkdtemp(prefix="taskpool-fuzz-"))
    corpus.mkdir(parents=True, exist_ok=True)
    for index, seed in enumerate(seeds()):
        (corpus / f"seed-{index:03d}").write_bytes(seed)
    args.artifacts.mkdir(parents=True, exist_ok=True)
    flags += [
        f"-max_total_time={args.seconds}",
        "-max_len=16384",
        f"-artifact_prefix={args.artifacts}/",
        "-print_final_stats=1",
    ]
    print(f"fuzzing taskpool.protocol.Decoder for {args.seconds} s; corpus {corpus}, crashes to {args.artifacts}/", flush=True)
    atheris.Setup([sys.argv[0], *flags, str(corpus)], test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
