"""Hostile and malformed input: raw frames on the socket, bad arguments, bad results.

Every case ends by checking that the supervisor is alive and still runs a task for
a normal client: a bad peer may lose its own connection, never the service.
"""

from __future__ import annotations

import math
import threading
import time

import msgpack
import psutil
import pytest
import sample_tasks
from helpers import RawConnection, wait_until

import taskpool
from taskpool import protocol
from taskpool.client import Client, build_submit
from taskpool.protocol import (
    DEFAULT_MAX_FRAME,
    HEADER,
    MAGIC,
    PROTOCOL_VERSION,
    Cancel,
    Decoder,
    Error,
    Hello,
    Message,
    Query,
    QueryMany,
    Stats,
    StatsRequest,
    Submit,
    Welcome,
    encode,
)

HOSTILE_IMPORTS = ("sample_tasks", "hostile_tasks")


# -- helpers -------------------------------------------------------------------


def example(cls: type[Message]) -> Message:
    """An instance of ``cls`` with a plausible value of the accepted type in every field."""
    samples = {str: "a" * 32, int: 1, float: 1.0, bool: True, list: [], dict: {}, type(None): None, object: None}
    return cls(*(samples[accepted[0]] for accepted in cls._types))


def frame(payload: bytes) -> bytes:
    return HEADER.pack(len(payload)) + payload


def packed(values: list) -> bytes:
    return frame(msgpack.packb(values, use_bin_type=True))


def assert_still_serving(sup) -> None:
    assert sup.proc.poll() is None, f"supervisor exited with {sup.proc.returncode}:\n{sup.log()}"
    assert psutil.Process(sup.pid).status() != psutil.STATUS_ZOMBIE
    assert sup.submit(sample_tasks.add, 1, 2).result(timeout=10) == 3


def assert_refused(conn: RawConnection, code: str) -> Error:
    """The connection gets exactly one Error with ``code``, then EOF, nothing cut off."""
    msgs = conn.read_until_eof()
    assert len(msgs) == 1 and isinstance(msgs[0], Error), msgs
    assert msgs[0].code == code, msgs[0]
    assert msgs[0].message
    assert conn.decoder.pending == 0
    return msgs[0]


@pytest.fixture
def use_supervisor():
    """Point the module-level API (taskpool.submit, taskpool.get, ...) at a supervisor for one test."""

    def configure(sup) -> None:
        taskpool.configure(spool=str(sup.spool), socket=sup.socket)

    yield configure
    taskpool.configure(spool="", socket="")


# -- malformed frames ------------------------------------------------------------------

GARBAGE = {
    "http_request": b"GET / HTTP/1.1\r\nHost: taskpool\r\n\r\n",
    "invalid_msgpack": frame(b"\xc1\xc1\xc1\xc1"),
    "zero_length_frame": frame(b""),
    "not_an_array": frame(msgpack.packb({"type": 1})),
    "empty_array": packed([]),
    "type_code_is_a_string": packed(["1", MAGIC, 1]),
    "unknown_type_code": packed([99, "x"]),
    "too_few_fields": packed([1, MAGIC]),
    "too_many_fields": packed([1, MAGIC, 1, "extra"]),
    "wrong_field_type": packed([1, MAGIC, "1"]),
    "bool_for_int": packed([1, MAGIC, True]),
    "bytes_for_str": packed([1, MAGIC.encode(), 1]),
    "ext_type": packed([1, msgpack.ExtType(5, b"x"), 1]),
    "timestamp_ext": packed([1, msgpack.Timestamp(1, 0), 1]),
    "lying_array_header": frame(b"\xdd\xff\xff\xff\xff"),
    "lying_string_header": frame(b"\x93\x01\xdb\xff\xff\xff\xff"),
    "deep_nesting": frame(b"\x91" * 100_000 + b"\xc0"),
    "trailing_bytes": frame(msgpack.packb([5]) + b"\x00"),
    "non_string_map_key": packed([2, "id", "name", [], {1: 2}, None, None, None, None, None]),
}


@pytest.mark.parametrize("data", GARBAGE.values(), ids=GARBAGE.keys())
def test_garbage_gets_bad_frame_then_eof(supervisor, raw, data):
    conn = raw(supervisor.socket)
    conn.send_bytes(data)
    assert_refused(conn, "bad_frame")
    assert_still_serving(supervisor)


@pytest.mark.parametrize("greet", [False, True], ids=["before_hello", "after_hello"])
@pytest.mark.parametrize("length", [DEFAULT_MAX_FRAME + 1, 2**32 - 1])
def test_oversized_length_header_is_refused_from_the_header_alone(supervisor, raw, greet, length):
    conn = raw(supervisor.socket)
    if greet:
        conn.hello()
    conn.send_bytes(HEADER.pack(length) + b"\x93")  # no body follows: the header must be enough
    error = assert_refused(conn, "bad_frame")
    assert str(length) in error.message and "limit" in error.message
    assert_still_serving(supervisor)


def test_truncated_frame_then_close(supervisor, raw):
    conn = raw(supervisor.socket)
    conn.hello()
    whole = encode(build_submit("sample_tasks.add", (1, 2), {}))
    conn.send_bytes(whole[: len(whole) // 2])
    conn.close()
    assert_still_serving(supervisor)
    assert "Traceback" not in supervisor.log()


def test_truncated_frames_that_stall_do_not_block_other_clients(supervisor, raw):
    stalled = []
    for _ in range(20):
        conn = raw(supervisor.socket)
        conn.hello()
        conn.send_bytes(HEADER.pack(100) + b"\x95\x02\xa1")  # 100 bytes announced, 3 sent
        stalled.append(conn)
    for _ in range(3):
        assert_still_serving(supervisor)
    assert supervisor.stats()["pid"] == supervisor.pid
    for conn in stalled:  # still open, owed nothing: no reply, no close
        conn.sock.settimeout(0.2)
        with pytest.raises(TimeoutError):
            conn.recv()


@pytest.mark.parametrize(
    "first",
    [StatsRequest(), Query("0" * 32, 0.0), build_submit("sample_tasks.add", (1, 2), {}), example(Welcome)],
    ids=["stats", "query", "submit", "welcome"],
)
def test_no_hello_first_is_bad_version(supervisor, raw, first):
    before = supervisor.stats()["counters"]["submitted"]
    conn = raw(supervisor.socket)
    conn.send(first)
    assert_refused(conn, "bad_version")
    assert supervisor.stats()["counters"]["submitted"] == before
    assert_still_serving(supervisor)


@pytest.mark.parametrize("hello", [Hello(MAGIC, 99), Hello(MAGIC, 0), Hello("celery", 1)], ids=["v99", "v0", "bad_magic"])
def test_bad_hello_is_bad_version(supervisor, raw, hello):
    conn = raw(supervisor.socket)
    conn.send(hello)
    error = assert_refused(conn, "bad_version")
    if hello.magic == MAGIC:
        assert str(hello.version) in error.message
    assert_still_serving(supervisor)


CLIENT_REQUESTS = (Submit, Query, QueryMany, Cancel, StatsRequest)
#: One of every other message type (supervisor replies, worker and internal frames), plus a second Hello.
NOT_CLIENT_REQUESTS = [
    Hello(MAGIC, PROTOCOL_VERSION) if cls is Hello else example(cls)
    for cls in protocol._BY_CODE.values()
    if cls not in CLIENT_REQUESTS
]


@pytest.mark.parametrize("msg", NOT_CLIENT_REQUESTS, ids=[type(m).__name__ for m in NOT_CLIENT_REQUESTS])
def test_non_client_message_after_hello_is_bad_frame(supervisor, raw, msg):
    conn = raw(supervisor.socket)
    conn.hello()
    conn.send(msg)
    error = assert_refused(conn, "bad_frame")
    assert type(msg).__name__ in error.message
    assert_still_serving(supervisor)


# -- bad requests through the client ---------------------------------------------------


def test_unknown_task_name_raises_unknown_task(supervisor, raw, use_supervisor):
    use_supervisor(supervisor)
    with pytest.raises(taskpool.UnknownTask) as caught:
        taskpool.submit("no_such_module.no_such_task", 1)
    assert caught.value.code == "unknown_task"
    assert "no_such_module.no_such_task" in caught.value.message
    conn = raw(supervisor.socket)
    conn.hello()
    submit = build_submit("sample_tasks.nope", (), {})
    conn.send(submit)
    reply = conn.recv()
    assert isinstance(reply, Error) and reply.code == "unknown_task" and reply.task_id == submit.task_id
    conn.send(StatsRequest())  # the connection stays usable after a refused Submit
    assert isinstance(conn.recv(), Stats)
    data = supervisor.stats()
    assert data["counters"]["succeeded"] == 0 and data["queue"] == {"ready": 0, "delayed": 0, "running": 0}
    assert_still_serving(supervisor)


BAD_ARGUMENTS = {
    "object": ((object(),), {}),
    "bytes": ((b"raw",), {}),
    "set": (({1, 2},), {}),
    "nan": ((math.nan,), {}),
    "inf_kwarg": ((), {"a": math.inf, "b": 1}),
    "int_2_70": ((2**70, 1), {}),
    "negative_2_70": ((-(2**70), 1), {}),
    "nested_object": (([1, {"k": object()}],), {}),
    "int_dict_key": (({1: "one"},), {}),
}


@pytest.mark.parametrize("args, kwargs", BAD_ARGUMENTS.values(), ids=BAD_ARGUMENTS.keys())
def test_unserializable_arguments_fail_in_the_caller(supervisor, use_supervisor, args, kwargs):
    use_supervisor(supervisor)
    before = supervisor.stats()["counters"]["submitted"]
    with pytest.raises(taskpool.InvalidArguments):
        taskpool.submit(sample_tasks.add, *args, **kwargs)
    with pytest.raises(taskpool.InvalidArguments):
        sample_tasks.echo.submit(*args, **kwargs)
    with pytest.raises(taskpool.InvalidArguments):
        supervisor.submit(sample_tasks.add, *args, **kwargs)
    assert supervisor.stats()["counters"]["submitted"] == before
    assert supervisor.stats()["queue"] == {"ready": 0, "delayed": 0, "running": 0}
    assert_still_serving(supervisor)


UNSTORABLE_RESULTS = [
    "sample_tasks.unserializable_result",
    "hostile_tasks.returns_nan",
    "hostile_tasks.returns_bytes",
    "hostile_tasks.returns_set",
    "hostile_tasks.returns_big_int",
    "hostile_tasks.returns_int_keys",
]


def test_unstorable_results_end_failed_with_invalid_arguments(start_supervisor):
    sup = start_supervisor("--workers", "2", imports=HOSTILE_IMPORTS)
    for name in UNSTORABLE_RESULTS:
        handle = sup.submit(name)
        with pytest.raises(taskpool.TaskFailed) as caught:
            handle.result(timeout=10)
        err = caught.value
        assert err.status == "FAILED", name
        assert err.exception_type == "taskpool.errors.InvalidArguments", (name, err.exception_type)
        assert name in err.remote_message and "cannot be stored" in err.remote_message, err.remote_message
        assert handle.status == "FAILED"
    counters = sup.stats()["counters"]
    assert counters["failed"] == len(UNSTORABLE_RESULTS)
    assert counters["worker_crashes"] == 0
    assert_still_serving(sup)


def test_exception_whose_str_fails_is_reported_not_fatal_to_the_worker(start_supervisor):
    """Beyond the brief: a task raising an exception whose __str__ raises."""
    sup = start_supervisor("--workers", "1", imports=HOSTILE_IMPORTS)
    worker_pid = sup.worker_pids()[0]
    handle = sup.submit("hostile_tasks.raises_unprintable")
    with pytest.raises(taskpool.TaskFailed) as caught:
        handle.result(timeout=10)
    assert caught.value.exception_type == "hostile_tasks.UnprintableError", caught.value
    assert sup.stats()["counters"]["worker_crashes"] == 0
    assert sup.worker_pids() == [worker_pid]
    assert_still_serving(sup)


def test_result_over_the_frame_limit_fails_and_the_worker_survives(start_supervisor):
    sup = start_supervisor("--workers", "1", "--max-frame", "100000")
    worker_pid = sup.worker_pids()[0]
    handle = sup.submit(sample_tasks.huge_result, 200_000)
    with pytest.raises(taskpool.TaskFailed) as caught:
        handle.result(timeout=10)
    err = caught.value
    assert err.status == "FAILED"
    assert err.exception_type == "taskpool.errors.InvalidArguments"
    assert "sample_tasks.huge_result" in err.remote_message
    assert "-byte result limit" in err.remote_message
    info = handle.refresh()
    assert info.worker_pids == [worker_pid]
    assert sup.worker_pids() == [worker_pid] and psutil.pid_exists(worker_pid)
    assert sup.stats()["counters"]["worker_crashes"] == 0
    assert sup.submit(sample_tasks.huge_result, 50_000).result(timeout=10) == "x" * 50_000
    assert sup.worker_pids() == [worker_pid]
    assert_still_serving(sup)


def test_result_just_under_the_frame_limit_reaches_the_client(start_supervisor):
    """Beyond the brief: a result whose Done frame fits the limit but whose TaskInfo
    reply (a few more fields) does not. The caller should get the value or a
    TaskFailed, and its connection should stay usable."""
    sup = start_supervisor("--workers", "1")
    size = DEFAULT_MAX_FRAME - 64
    handle = sup.submit(sample_tasks.huge_result, size)
    try:
        value = handle.result(timeout=30)
    except taskpool.TaskFailed as exc:
        assert "result limit" in exc.remote_message
    else:
        assert len(value) == size
    assert sup.stats()["pid"] == sup.pid  # the same client connection still works
    assert_still_serving(sup)


def test_query_and_cancel_of_an_unknown_id_raise_task_not_found(supervisor, raw, use_supervisor):
    with pytest.raises(taskpool.TaskNotFound) as caught:
        supervisor.client.query("f" * 32)
    assert caught.value.code == "not_found" and "f" * 32 in caught.value.message
    use_supervisor(supervisor)
    handle = taskpool.get("e" * 32)
    with pytest.raises(taskpool.TaskNotFound):
        handle.refresh()
    with pytest.raises(taskpool.TaskNotFound):
        handle.result(timeout=1)
    with pytest.raises(taskpool.TaskNotFound):
        handle.cancel()
    conn = raw(supervisor.socket)
    conn.hello()
    conn.send(Query("d" * 32, 5.0))
    reply = conn.recv()
    assert isinstance(reply, Error) and reply.code == "not_found" and reply.task_id == "d" * 32
    assert_still_serving(supervisor)


# -- misbehaving connections -----------------------------------------------------------


def test_client_that_never_reads_is_dropped_past_client_buffer(start_supervisor, raw):
    sup = start_supervisor("--workers", "1", "--client-buffer", "65536")
    flood = raw(sup.socket, timeout=5.0)
    flood.hello()
    batch = encode(StatsRequest()) * 10  # ~10 kB of replies per batch, none of them read
    deadline = time.monotonic() + 30
    sent = 0
    dropped = None
    while dropped is None:
        assert time.monotonic() < deadline, f"not dropped after {sent} unread requests"
        try:
            flood.send_bytes(batch)
            sent += 10
        except OSError as exc:  # EPIPE / ECONNRESET once the supervisor has closed it
            dropped = exc
        assert sup.stats()["pid"] == sup.pid  # others are served throughout
    wait_until(lambda: "not reading its replies" in sup.log(), message="drop logged")
    # what was already delivered is whole frames, then the connection is closed
    msgs = flood.read_until_eof()
    assert msgs and all(isinstance(m, Stats) for m in msgs)
    assert len(msgs) < sent
    assert_still_serving(sup)
    assert sup.proc.poll() is None


def test_refused_client_gets_whole_frames_then_the_error(supervisor, raw):
    """Beyond the brief: a client that pipelines requests without reading, then sends
    garbage. Whatever the supervisor still delivers must be whole frames, ending
    with the Error it promises; it must not cut a reply in the middle."""
    conn = raw(supervisor.socket)
    conn.hello()
    conn.send_bytes(encode(StatsRequest()) * 2000)  # ~2 MB of replies: more than the socket holds
    first = conn.sock.recv(16)  # replies are flowing: part of them now sits in the outbox
    assert first
    conn.send_bytes(frame(b"\xc1"))
    data = bytearray(first)
    while chunk := conn._read():
        data += chunk
    decoder = Decoder(64 * 1024 * 1024)
    msgs = list(decoder.feed(bytes(data)))
    assert decoder.pending == 0, f"stream ends inside a frame ({decoder.pending} bytes) after {len(msgs)} whole frames"
    assert isinstance(msgs[-1], Error) and msgs[-1].code == "bad_frame", msgs[-1:]
    assert all(isinstance(m, Stats) for m in msgs[:-1])
    assert_still_serving(supervisor)


def test_query_wait_nan_does_not_stall_other_waiters(supervisor, raw, tmp_path):
    """Beyond the brief: Query(wait=nan) on a running task (the public Client.query
    sends it as given) must not stop other clients' waits from timing out."""
    gate = tmp_path / "gate"
    blocker = supervisor.submit(sample_tasks.wait_for_file, str(gate))
    wait_until(lambda: blocker.status == "RUNNING", message="blocker running")
    conn = raw(supervisor.socket)
    conn.hello()
    conn.send(Query(blocker.id, math.nan), StatsRequest())
    refusal = conn.recv()  # a non-finite number is a bad frame: refused, connection closed
    assert isinstance(refusal, Error) and refusal.code == "bad_frame" and "finite" in refusal.message
    victim = Client(supervisor.socket, timeout=3.0)  # another client, waiting 0.5s on the same task
    started = time.monotonic()
    try:
        info = victim.query(blocker.id, wait=0.5)
        assert info.status == "RUNNING"
        assert time.monotonic() - started < 3.0
    finally:
        victim._forget()
        gate.touch()
    assert blocker.result(timeout=10) == "released"
    assert_still_serving(supervisor)


def test_200_concurrent_clients_each_submit_and_read_a_result(supervisor):
    count = 200
    connected = threading.Barrier(count, timeout=60)
    results: dict[int, object] = {}
    errors: list[BaseException] = []
    client = supervisor.client  # one connection per thread

    def one(i: int) -> None:
        try:
            client.request(StatsRequest())  # handshake: this thread's own connection
            connected.wait()  # all 200 connections are open at once from here
            results[i] = supervisor.submit(sample_tasks.add, i, 1000).result(timeout=60)
        except BaseException as exc:  # reported below
            errors.append(exc)
            connected.abort()
        finally:
            client._forget()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors[:3]
    assert results == {i: i + 1000 for i in range(count)}
    counters = supervisor.stats()["counters"]
    # a store sweep may adopt a row a moment before its client's Submit arrives
    assert counters["submitted"] + counters["adopted"] == count and counters["succeeded"] == count
    assert_still_serving(supervisor)
