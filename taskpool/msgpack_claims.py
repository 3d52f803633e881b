"""A walk over a msgpack payload, before msgpack decodes it, that refuses headers claiming more
elements than the payload could hold (see ``check_claims``). No I/O, no decoding."""

from __future__ import annotations

import re
import struct

from .errors import ProtocolError


def _simple_run() -> re.Pattern[bytes]:
    """A run of msgpack tokens the claims walk need not look at: every token but a container header
    claiming 16 entries or more and a str/bin/ext body of 64 bytes or more. Those are left to
    Python, and each one takes 66 bytes or adds 16 to the claims, so a 4 MiB payload costs at most
    ~260,000 Python steps before it is walked through or refused. Bodies up to 63 bytes stay in C
    for the 32-character task ids that fill a QueryMany or a TaskInfos (0.56 -> 0.20 us an id).

    Possessive (``*+``, ``++``): sre then keeps no backtracking state per token; the greedy form
    allocated ~70 bytes per token (~290 MiB for a 4 MiB payload) and ran 3x slower. Now 35-200 ns
    a token (runs of one-byte tokens: ~2 ns a byte), at most ~0.3 s for 4 MiB."""
    fixed = {1: b"\xcc\xd0", 2: b"\xcd\xd1\xd4", 3: b"\xd5", 4: b"\xca\xce\xd2", 5: b"\xd6", 8: b"\xcb\xcf\xd3",
             9: b"\xd7", 17: b"\xd8"}  # bytes after the lead byte: ints, floats, fixext (type byte included)

    def short(extra: int) -> bytes:  # a length under 64, then the body (and an ext's type byte)
        return b"(?:" + b"|".join(b"\\x%02x.{%d}" % (n, n + extra) for n in range(64)) + b")"

    branches = [rb"[\x00-\xa0\xc0\xc2\xc3\xe0-\xff]++"]  # one byte each; fixmap and fixarray headers too
    branches += [b"\\x%02x.{%d}" % (0xA0 | n, n) for n in range(1, 32)]  # fixstr
    branches += [b"[%s].{%d}" % (leads, n) for n, leads in fixed.items()]
    branches += [rb"[\xdc\xde]\x00[\x00-\x0f]", rb"[\xdd\xdf]\x00\x00\x00[\x00-\x0f]"]  # 15 entries at most
    branches += [rb"[\xd9\xc4]" + short(0), rb"[\xda\xc5]\x00" + short(0), rb"[\xdb\xc6]\x00\x00\x00" + short(0)]
    branches += [rb"\xc7" + short(1), rb"\xc8\x00" + short(1), rb"\xc9\x00\x00\x00" + short(1)]
    return re.compile(b"(?:" + b"|".join(branches) + b")*+", re.DOTALL)


_SIMPLE_RUN = _simple_run()
_U16 = struct.Struct(">H").unpack_from
_U32 = struct.Struct(">I").unpack_from


def check_claims(payload: bytes | bytearray | memoryview) -> None:
    """Refuse a payload whose array and map headers claim more elements in total than it has bytes.

    msgpack preallocates a list for each array header before reading its elements, and bounds each
    header by the payload length, not their sum: nested headers that each claim the whole payload
    cost levels x claim x 8 bytes (msgpack 1.2 caps each list at 10,000 entries until they arrive:
    ~80 MB from a 10 KB payload; msgpack 1.0 allocated the whole claim, ~8 GB from a 1 MiB payload,
    a MemoryError under a memory limit). Every element takes a byte at least, so a valid payload
    never claims more elements than it has bytes (a map entry is two: key and value).

    A flat walk without a stack: one regex skips runs of tokens in C (``_simple_run``), Python reads
    the rest: long str/bin/ext bodies are skipped by their length, and headers claiming 16 entries
    or more are counted (fixarray and fixmap headers, and longer forms claiming no more, preallocate
    at most 15 entries each: not counted). Truncated or invalid input ends the walk: msgpack reports
    it, and allocates nothing past the point where it stops. Nesting is left to msgpack (1,024
    levels) and to the value check (100)."""
    size = len(payload)
    claimed = 0
    pos = 0
    skip = _SIMPLE_RUN.match
    while True:
        pos = skip(payload, pos).end()  # type: ignore[union-attr]  # *+ always matches
        if pos >= size:
            return
        lead = payload[pos]
        if lead == 0xDC or lead == 0xDE:  # array16, map16
            if pos + 3 > size:
                return
            claimed += _U16(payload, pos + 1)[0] << (lead == 0xDE)
            pos += 3
        elif lead == 0xDD or lead == 0xDF:  # array32, map32
            if pos + 5 > size:
                return
            claimed += _U32(payload, pos + 1)[0] << (lead == 0xDF)
            pos += 5
        elif lead == 0xD9 or lead == 0xC4:  # str8, bin8
            if pos + 2 > size:
                return
            pos += 2 + payload[pos + 1]
            continue
        elif lead == 0xDA or lead == 0xC5:  # str16, bin16
            if pos + 3 > size:
                return
            pos += 3 + _U16(payload, pos + 1)[0]
            continue
        elif lead == 0xDB or lead == 0xC6:  # str32, bin32
            if pos + 5 > size:
                return
            pos += 5 + _U32(payload, pos + 1)[0]
            continue
        elif lead == 0xC7 or lead == 0xC8 or lead == 0xC9:  # ext8/16/32: a type byte after the length
            width = 1 << (lead - 0xC7)
            if pos + 1 + width > size:
                return
            length = payload[pos + 1] if width == 1 else (_U16 if width == 2 else _U32)(payload, pos + 1)[0]
            pos += 2 + width + length
            continue
        else:
            return  # 0xc1 (never used), or a fixed-size token cut short by the end of the payload
        if claimed > size:
            raise ProtocolError(f"containers claim at least {claimed} elements in a payload of {size} bytes")
