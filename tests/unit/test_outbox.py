"""The worker's outbox: Done frames of quick tasks held and written together, in order."""

from __future__ import annotations

import socket
import time

import pytest

from taskpool.outbox import HOLD_AGE, HOLD_MAX, Outbox
from taskpool.protocol import Done, Progress, encode
from taskpool.transport import Channel


@pytest.fixture
def pair():
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)
    yield Outbox(Channel(ours, 1 << 20)), theirs
    ours.close()
    theirs.close()


def received(sock: socket.socket) -> bytes:
    try:
        return sock.recv(1 << 20)
    except BlockingIOError:
        return b""


def done(i: int) -> bytes:
    return encode(Done(f"t{i}", True, i, None, 0, None))


def test_held_frames_go_out_before_the_next_frame_sent(pair):
    outbox, peer = pair
    outbox.hold(done(1))
    outbox.hold(done(2))
    assert received(peer) == b""  # held
    progress = encode(Progress("t3", 50.0, None))
    outbox.send(progress)
    assert received(peer) == done(1) + done(2) + progress
    assert outbox.held == []


def test_holding_the_maximum_writes_them_all_at_once(pair):
    outbox, peer = pair
    for i in range(HOLD_MAX - 1):
        outbox.hold(done(i))
    assert received(peer) == b""
    outbox.hold(done(HOLD_MAX - 1))
    assert received(peer) == b"".join(done(i) for i in range(HOLD_MAX))


def test_flush_writes_what_is_held_and_nothing_else(pair):
    outbox, peer = pair
    outbox.flush()
    assert received(peer) == b""
    outbox.hold(done(7))
    outbox.flush()
    assert received(peer) == done(7)


def test_a_held_frame_is_written_by_the_watchdog_if_the_next_task_runs_long(pair):
    outbox, peer = pair
    outbox.hold(done(1))
    deadline = time.monotonic() + 5
    data = b""
    while not data and time.monotonic() < deadline:  # the main thread is "busy": it never flushes
        peer.settimeout(0.05)
        try:
            data = peer.recv(1 << 20)
        except TimeoutError:
            pass
    assert data == done(1)
    waited = time.monotonic() - outbox.held_since
    assert waited >= HOLD_AGE
    outbox.hold(done(2))  # the watchdog sleeps between holds and wakes for the next
    peer.settimeout(5)
    assert peer.recv(1 << 20) == done(2)
