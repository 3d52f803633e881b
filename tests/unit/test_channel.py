"""Channel: the blocking side of a framed socket (clients, workers, the recorder), with
its own waits (a spin, then poll() up to the timeout) over a non-blocking socket."""

from __future__ import annotations

import socket
import threading

import pytest

from taskpool.config import client_spin
from taskpool.errors import ConfigError
from taskpool.protocol import Accepted, Query, encode
from taskpool.transport import CHANNEL_READ_SIZE, Channel, Closed

SPINS = [0.0, 0.0002]


@pytest.fixture
def pair():
    ours, theirs = socket.socketpair()
    yield ours, theirs
    ours.close()
    theirs.close()


@pytest.mark.parametrize("spin", SPINS)
def test_recv_gives_frames_in_order_across_reads(pair, spin):
    ours, theirs = pair
    channel = Channel(ours, 1 << 20, spin=spin)
    frames = b"".join(encode(Accepted(f"t{i}")) for i in range(3))
    theirs.sendall(frames[:5])  # a frame cut across writes
    theirs.sendall(frames[5:])
    assert [channel.recv().task_id for _ in range(3)] == ["t0", "t1", "t2"]


@pytest.mark.parametrize("spin", SPINS)
def test_recv_raises_timeout_error_when_nothing_comes(pair, spin):
    ours, _ = pair
    channel = Channel(ours, 1 << 20, spin=spin)
    channel.settimeout(0.05)
    with pytest.raises(TimeoutError):
        channel.recv()
    assert ours.gettimeout() == 0.0  # the socket itself never blocks


def test_recv_waits_past_the_spin_for_a_late_frame(pair):
    ours, theirs = pair
    channel = Channel(ours, 1 << 20, spin=0.0001)
    channel.settimeout(10.0)
    late = threading.Timer(0.05, theirs.sendall, (encode(Accepted("late")),))
    late.start()
    try:
        assert channel.recv().task_id == "late"
    finally:
        late.cancel()


def test_a_frame_larger_than_the_read_buffer_arrives_whole(pair):
    ours, theirs = pair
    channel = Channel(ours, 1 << 22)
    big = Query("x" * (3 * CHANNEL_READ_SIZE), 0.0)
    sender = threading.Thread(target=theirs.sendall, args=(encode(big),))
    sender.start()
    try:
        assert channel.recv() == big
    finally:
        sender.join(10)


def test_eof_between_frames_is_clean_and_inside_one_is_not(pair):
    ours, theirs = pair
    channel = Channel(ours, 1 << 20)
    theirs.sendall(encode(Accepted("a")))
    theirs.close()
    assert channel.recv().task_id == "a"
    with pytest.raises(Closed) as clean:
        channel.recv()
    assert clean.value.clean

    a, b = socket.socketpair()
    cut = Channel(a, 1 << 20)
    b.sendall(encode(Accepted("b"))[:-2])
    b.close()
    with pytest.raises(Closed) as cut_short:
        cut.recv()
    assert not cut_short.value.clean
    a.close()


def test_send_bytes_writes_everything_when_the_socket_fills(pair):
    ours, theirs = pair
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    channel = Channel(ours, 1 << 20)
    channel.settimeout(10.0)
    payload = bytes(range(256)) * 8192  # 2 MiB: many times the socket buffer
    received = bytearray()

    def drain() -> None:
        while len(received) < len(payload):
            chunk = theirs.recv(65536)
            if not chunk:
                return
            received.extend(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    channel.send_bytes(payload)
    reader.join(10)
    assert bytes(received) == payload


def test_send_bytes_times_out_when_the_peer_never_reads(pair):
    ours, _ = pair
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    channel = Channel(ours, 1 << 20)
    channel.settimeout(0.05)
    with pytest.raises(TimeoutError):
        channel.send_bytes(b"x" * (4 << 20))


def test_pending_takes_what_has_arrived_without_blocking(pair):
    ours, theirs = pair
    channel = Channel(ours, 1 << 20, spin=0.0002)
    channel.settimeout(None)  # pending() must return even with no timeout at all
    assert channel.pending() == []
    theirs.sendall(encode(Accepted("c")))
    for _ in range(1000):  # the bytes are in the socket once sendall returns; read until seen
        if channel.pending():
            break
    assert [m.task_id for m in channel.pending()] == ["c"]
    assert channel.buffered() == 1


def test_client_spin_comes_from_the_environment_or_the_default():
    assert client_spin({}) == 0.0002
    assert client_spin({"TASKPOOL_SPIN": "0"}) == 0.0
    assert client_spin({"TASKPOOL_SPIN": "0.001"}) == 0.001
    with pytest.raises(ConfigError, match="TASKPOOL_SPIN.*not a number"):
        client_spin({"TASKPOOL_SPIN": "fast"})
    with pytest.raises(ConfigError, match="TASKPOOL_SPIN.*0 or more"):
        client_spin({"TASKPOOL_SPIN": "-1"})
    with pytest.raises(ConfigError, match="TASKPOOL_SPIN.*0 or more"):
        client_spin({"TASKPOOL_SPIN": "nan"})
