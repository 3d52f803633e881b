"""Channel: the blocking side of a framed socket (clients, workers, the recorder), with
its own waits (a spin, then poll() up to the timeout) over a non-blocking socket."""

from __future__ import annotations

import socket
import threading

import pytest

from taskpool.config import client_spin, load_config
from taskpool.errors import ConfigError
from taskpool.protocol import Accepted, Query, encode
from taskpool.transport import CHANNEL_READ_SIZE, Channel, Closed

SPINS = [0.0, 0.0002]


def assert_late_frame_arrives(channel: Channel, far: socket.socket) -> None:
    """A frame sent 50 ms from now (past any spin) reaches ``channel.recv()``."""
    late = threading.Timer(0.05, far.sendall, (encode(Accepted("late")),))
    late.start()
    try:
        assert channel.recv().task_id == "late"
    finally:
        late.cancel()


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
    assert_late_frame_arrives(channel, theirs)


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
    for bad in ("-1", "nan", "inf", "0.5"):
        with pytest.raises(ConfigError, match=r"TASKPOOL_SPIN.*between 0 and 0.01 seconds"):
            client_spin({"TASKPOOL_SPIN": bad})


@pytest.mark.parametrize("bad", ["-0.001", "inf", "nan", "1"])
def test_a_spin_out_of_range_is_refused_by_the_supervisor_config(bad):
    with pytest.raises(ConfigError, match=r"spin .*between 0 and 0.01 seconds"):
        load_config({"spin": bad}, environ={})


def test_the_spin_never_outlasts_the_timeout(pair):
    ours, _ = pair
    channel = Channel(ours, 1 << 20, spin=30.0)
    channel.settimeout(0.05)
    done = threading.Event()

    def wait() -> None:
        with pytest.raises(TimeoutError):
            channel.recv()
        done.set()

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    assert done.wait(10), "a 30 s spin ran past a 0.05 s timeout"


def test_a_timeout_too_long_for_poll_still_waits(pair):
    ours, theirs = pair
    channel = Channel(ours, 1 << 20)
    channel.settimeout(3e9)  # past poll()'s C int of milliseconds
    assert_late_frame_arrives(channel, theirs)


@pytest.mark.parametrize("bad", [-1.0, float("nan")])
def test_a_negative_timeout_is_refused(pair, bad):
    channel = Channel(pair[0], 1 << 20)
    with pytest.raises(ValueError, match="timeout must be 0 or more"):
        channel.settimeout(bad)


def test_the_timeout_bounds_the_whole_send_not_each_part(pair):
    """As with sendall: a peer that takes a little now and then cannot stretch a write."""
    ours, theirs = pair
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    channel = Channel(ours, 1 << 20)
    channel.settimeout(0.2)
    stop = threading.Event()

    def trickle() -> None:  # 4 KiB every 20 ms: 1 MiB would take 5 s
        while not stop.wait(0.02):
            try:
                theirs.recv(4096)
            except OSError:
                return

    reader = threading.Thread(target=trickle, daemon=True)
    reader.start()
    try:
        with pytest.raises(TimeoutError):
            channel.send_bytes(b"x" * (1 << 20))
    finally:
        stop.set()
        reader.join(5)


def test_without_poll_the_channel_waits_in_select(pair, monkeypatch):
    """eventlet's green select has no poll(): waits fall back to select()."""
    import select

    monkeypatch.delattr(select, "poll")
    ours, theirs = pair
    channel = Channel(ours, 1 << 20)
    channel.settimeout(10.0)
    assert_late_frame_arrives(channel, theirs)
    channel.settimeout(0.05)
    with pytest.raises(TimeoutError):
        channel.recv()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    with pytest.raises(TimeoutError):
        channel.send_bytes(b"x" * (4 << 20))


def test_divert_takes_messages_aside_as_they_are_decoded(pair):
    ours, theirs = pair
    channel = Channel(ours, 1 << 20)
    taken: list[str] = []

    def divert(msg) -> bool:
        if msg.task_id.startswith("aside"):
            taken.append(msg.task_id)
            return True
        return False

    channel.divert = divert
    theirs.sendall(b"".join(encode(Accepted(i)) for i in ("t0", "aside1", "t1", "aside2")))
    assert channel.recv().task_id == "t0"
    assert taken == ["aside1", "aside2"]  # all of the read was decoded: both taken aside at once
    assert channel.recv().task_id == "t1" and channel.buffered() == 0
