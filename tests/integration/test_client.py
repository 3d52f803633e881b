"""The client: one connection per thread, a fresh one after fork, clear errors."""

from __future__ import annotations

import os
import signal
import socket
import threading

import pytest
import sample_tasks
from helpers import wait_until

import taskpool
from taskpool.client import Client, default_client
from taskpool.protocol import (
    DEFAULT_MAX_FRAME,
    PROTOCOL_VERSION,
    Decoder,
    Error,
    Hello,
    Query,
    QueryMany,
    StatsRequest,
    Submit,
    TaskInfo,
    TaskInfos,
    Welcome,
    encode,
)
from taskpool.stores import open_store
from taskpool.transport import Channel


@pytest.fixture
def configured(supervisor):
    taskpool.configure(spool=str(supervisor.spool))
    yield supervisor
    taskpool.configure(spool="")


def test_threads_share_the_client_safely(configured):
    results: dict[int, list[int]] = {}
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            handles = [sample_tasks.add.submit(n, i) for i in range(25)]
            results[n] = [h.result(timeout=30) for h in handles]
        except BaseException as exc:  # reported to the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert results == {n: [n + i for i in range(25)] for n in range(12)}


def test_a_blocking_result_wait_does_not_block_other_threads(configured, tmp_path):
    gate = tmp_path / "gate"
    slow = sample_tasks.wait_for_file.submit(str(gate))
    waiting = threading.Thread(target=slow.result, kwargs={"timeout": 30})
    waiting.start()
    try:
        assert sample_tasks.add.submit(1, 2).result(timeout=10) == 3
    finally:
        gate.touch()
        waiting.join(30)
    assert not waiting.is_alive()


def test_forked_child_gets_its_own_connection(configured):
    assert sample_tasks.add.submit(1, 1).result(timeout=10) == 2  # parent connection exists
    parent_channel = default_client()._local.channel
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: must not reuse the parent's socket
        code = 1
        try:
            child_channel_before = getattr(default_client()._local, "channel", None)
            value = sample_tasks.add.submit(20, 22).result(timeout=10)
            fresh = default_client()._local.channel is not child_channel_before
            os.write(write_end, f"{value} {fresh}".encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    _, status = os.waitpid(pid, 0)
    report = os.read(read_end, 100).decode()
    os.close(read_end)
    assert os.waitstatus_to_exitcode(status) == 0
    assert report == "42 True"
    assert default_client()._local.channel is parent_channel
    assert sample_tasks.add.submit(2, 2).result(timeout=10) == 4


def test_reconnects_after_supervisor_restart(start_supervisor, tmp_path):
    spool = tmp_path / "spool-restart"
    first = start_supervisor("--workers", "1", spool=spool)
    client = Client(first.socket)
    assert client.request(StatsRequest()).data["pid"] == first.pid
    first.signal(15)
    first.wait_exit(15)
    second = start_supervisor("--workers", "1", spool=spool)
    assert client.request(StatsRequest()).data["pid"] == second.pid


def test_unavailable_names_the_socket_with_the_memory_store(tmp_path):
    path = str(tmp_path / "nobody-home.sock")
    taskpool.configure(socket=path, store="memory")
    try:
        with pytest.raises(taskpool.SupervisorUnavailable) as caught:
            sample_tasks.add.submit(1, 2)
        assert path in str(caught.value)
    finally:
        taskpool.configure(socket="", store="")


def test_env_var_names_the_spool(supervisor, monkeypatch):
    monkeypatch.setenv("TASKPOOL_SPOOL", str(supervisor.spool))
    taskpool.configure(socket="", spool="")
    assert wait_until(lambda: taskpool.stats()["pid"] == supervisor.pid)


def test_wait_returns_every_final_state_in_order(configured):
    handles = [sample_tasks.add.submit(i, 1) for i in range(300)] + [sample_tasks.fail.submit("boom")]
    infos = taskpool.wait(handles, timeout=60)
    assert [i.task_id for i in infos] == [h.id for h in handles]
    assert [i.result for i in infos[:-1]] == [i + 1 for i in range(300)]
    assert infos[-1].status == "FAILED" and "boom" in infos[-1].errors[-1]["message"]
    assert [h.result(timeout=0) for h in handles[:-1]] == [i + 1 for i in range(300)]  # answered from the wait
    with pytest.raises(taskpool.TaskFailed):
        handles[-1].result(timeout=0)


def test_wait_times_out_with_a_clear_error(configured, tmp_path):
    blocker = sample_tasks.wait_for_file.submit(str(tmp_path / "never"), 30)
    with pytest.raises(taskpool.ResultTimeout):
        taskpool.wait([sample_tasks.add.submit(1, 2), blocker], timeout=0.3)
    (tmp_path / "never").touch()
    assert blocker.result(timeout=30) == "released"


def test_query_many_answers_none_for_unknown_ids_and_refuses_bad_requests(configured):
    from taskpool.protocol import QueryMany

    done = sample_tasks.add.submit(2, 2)
    done.result(timeout=30)
    client = default_client()
    infos = client.query_many([done.id, "no-such-task"])
    assert infos[0].status == "SUCCESSFUL" and infos[0].result == 4 and infos[1] is None
    with pytest.raises(taskpool.RemoteError, match="at most"):
        client.request(QueryMany(["x"] * 5001))
    with pytest.raises(taskpool.RemoteError, match="strings"):
        client.request(QueryMany([1, 2]))
    assert client.query(done.id).status == "SUCCESSFUL"  # the connection is still good


def test_stored_submits_of_a_known_name_need_no_reply_and_a_refusal_lands_in_the_row(configured):
    first = sample_tasks.add.submit(1, 1)  # the first of a name waits for Accepted (UnknownTask would raise)
    client = default_client()
    assert "sample_tasks.add" in client.known_names()
    later = [sample_tasks.add.submit(i, i) for i in range(50)]  # sent without waiting for replies
    assert [h.result(timeout=30) for h in [first, *later]] == [2] + [2 * i for i in range(50)]
    client.known_names().add("sample_tasks.no_such_task")  # as if it was unregistered by a reload since
    handle = taskpool.submit("sample_tasks.no_such_task", 1)  # no exception: nobody waits for the refusal
    info = handle.wait(timeout=30)
    assert info.status == "FAILED" and info.errors[-1]["type"] == "taskpool.errors.UnknownTask"
    wait_until(lambda: configured.store.fetch(handle.id).status == "FAILED", timeout=15, message="the row FAILED")
    assert client.query(first.id).status == "SUCCESSFUL"  # replies still line up with requests


# -- submit_and_wait: one round trip with the memory store --------------------------------------


@pytest.fixture
def memory_pool(start_supervisor):
    sup = start_supervisor("--workers", "2", "--store", "memory")
    taskpool.configure(spool=str(sup.spool), store="memory")
    yield sup
    taskpool.configure(spool="", store="")


def count_writes(monkeypatch) -> list[int]:
    """From now on, the size of every write a client Channel makes, in order."""
    sizes: list[int] = []
    real_send = Channel.send_bytes

    def counted_send(self, data):
        sizes.append(len(data))
        return real_send(self, data)

    monkeypatch.setattr(Channel, "send_bytes", counted_send)
    return sizes


def test_submit_and_wait_returns_the_result_in_one_round_trip(memory_pool, monkeypatch):
    assert taskpool.submit_and_wait(sample_tasks.add, (1, 1)) == 2  # connected and greeted
    sends = count_writes(monkeypatch)
    assert taskpool.submit_and_wait(sample_tasks.add, (2, 3)) == 5
    assert len(sends) == 1  # the Submit and its wait went in one write
    assert taskpool.submit_and_wait(sample_tasks.add.name, [4], {"b": 1}, timeout=10) == 5  # by name, kwargs
    counters = memory_pool.stats()["counters"]
    assert counters["submitted"] == 3 and counters["succeeded"] == 3


def test_submit_and_wait_raises_what_the_task_and_the_supervisor_say(memory_pool, tmp_path):
    with pytest.raises(taskpool.UnknownTask):
        taskpool.submit_and_wait("no.such.task", (1,))
    with pytest.raises(taskpool.InvalidArguments):
        taskpool.submit_and_wait(sample_tasks.echo, ({1, 2},))  # a set is not JSON: refused before sending
    with pytest.raises(taskpool.TaskFailed) as failed:
        taskpool.submit_and_wait(sample_tasks.fail, ("boom",), timeout=30)
    assert "boom" in str(failed.value)
    gate = tmp_path / "gate"
    with pytest.raises(taskpool.ResultTimeout, match="after 0.3s") as late:
        taskpool.submit_and_wait(sample_tasks.wait_for_file, (str(gate), 30), timeout=0.3)
    task_id = str(late.value).split()[1]
    gate.touch()
    assert taskpool.get(task_id).result(timeout=30) == "released"  # it went on running
    assert taskpool.submit_and_wait(sample_tasks.add, (1, 1)) == 2  # the connection still serves
    assert memory_pool.stats()["counters"]["submitted"] == 3  # fail, wait_for_file, add: the refused never were tasks


def test_submit_and_wait_with_a_durable_store_is_submit_then_result(configured):
    assert taskpool.submit_and_wait(sample_tasks.add, (20, 22), timeout=30) == 42
    with pytest.raises(taskpool.UnknownTask):
        taskpool.submit_and_wait("no.such.task")


def test_submit_and_wait_reports_a_refusal_the_supervisor_closed_after(start_supervisor, monkeypatch):
    sup = start_supervisor("--workers", "1", "--store", "memory", "--max-frame", "65536")
    taskpool.configure(spool=str(sup.spool), store="memory")
    try:
        sends = count_writes(monkeypatch)
        with pytest.raises(taskpool.RemoteError, match="65536-byte limit"):  # not "lost the connection"
            taskpool.submit_and_wait(sample_tasks.echo, ("x" * 100_000,), timeout=10)
        assert sum(size > 65536 for size in sends) == 1  # refused and closed: not sent again
        assert taskpool.submit_and_wait(sample_tasks.echo, ("small",), timeout=10) == "small"
        assert sup.stats()["counters"]["submitted"] == 1
    finally:
        taskpool.configure(spool="", store="")


def test_submit_and_wait_takes_kwargs_as_a_dict_with_a_durable_store(configured):
    assert taskpool.submit_and_wait(sample_tasks.echo, (), {"value": {"task": 1}}, timeout=30) == {"task": 1}
    assert taskpool.submit_and_wait(sample_tasks.add, (1,), {"b": 2}, timeout=30) == 3
    with pytest.raises(taskpool.UnknownTask):  # a "task" key is an argument like any other
        taskpool.submit_and_wait("no.such.task", (), {"task": 1}, timeout=30)


# -- submit_many with the memory store: refusals only, then one barrier reply -------------------


def count_replies(monkeypatch) -> list[str]:
    """From now on, the type name of every message a client Channel receives, in order."""
    names: list[str] = []
    real_recv = Channel.recv

    def counted_recv(self):
        msg = real_recv(self)
        names.append(type(msg).__name__)
        return msg

    monkeypatch.setattr(Channel, "recv", counted_recv)
    return names


def test_a_memory_batch_is_answered_by_one_barrier_reply(memory_pool, monkeypatch):
    assert taskpool.submit(sample_tasks.add, 0, 0).result(timeout=30) == 0  # connected and greeted
    replies = count_replies(monkeypatch)
    handles = taskpool.submit_many([(sample_tasks.add, (i, i)) for i in range(200)])
    assert replies == ["TaskInfos"]  # no Accepted per task: the barrier's empty reply alone
    assert [h.result(timeout=30) for h in handles] == [2 * i for i in range(200)]
    replies.clear()
    single = taskpool.submit(sample_tasks.add, 1, 2)  # one task: its own Accepted, no barrier
    assert replies == ["Accepted"] and single.result(timeout=30) == 3


def test_a_refusal_in_a_memory_batch_is_raised_and_the_rest_run(memory_pool, tmp_path):
    log = tmp_path / "log"
    calls = [(sample_tasks.record, (str(log), "a")), ("no.such.task", (1,)), (sample_tasks.record, (str(log), "b"))]
    with pytest.raises(taskpool.UnknownTask, match="no.such.task"):
        taskpool.submit_many(calls)
    wait_until(lambda: memory_pool.stats()["counters"]["succeeded"] == 2, timeout=30, message="the two others ran")
    assert sorted(log.read_text().split()) == ["a", "b"]
    assert memory_pool.stats()["counters"]["submitted"] == 2  # the refused one never was a task
    assert taskpool.submit(sample_tasks.add, 2, 2).result(timeout=30) == 4  # replies still line up


def test_a_full_queue_refuses_the_rest_of_a_memory_batch(start_supervisor, tmp_path):
    sup = start_supervisor("--workers", "1", "--store", "memory", "--max-ready", "3", "--prefetch", "0")
    taskpool.configure(spool=str(sup.spool), store="memory")
    try:
        gate = tmp_path / "gate"
        held = taskpool.submit(sample_tasks.wait_for_file, str(gate), 60)
        wait_until(lambda: held.refresh().status == "RUNNING", timeout=30, message="the worker is held")
        with pytest.raises(taskpool.RemoteError, match="max_ready") as refused:
            taskpool.submit_many([(sample_tasks.add, (i, 1)) for i in range(5)])
        assert refused.value.code == "queue_full"
        assert sup.stats()["counters"]["submitted"] == 1 + 3  # the held task and the three that fit
        gate.touch()
        wait_until(lambda: sup.stats()["counters"]["succeeded"] == 4, timeout=30, message="all accepted ones ran")
        assert taskpool.submit(sample_tasks.add, 5, 5).result(timeout=30) == 10
    finally:
        taskpool.configure(spool="", store="")


def test_a_raw_unstored_submit_without_reply_is_answered_only_when_refused(memory_pool, raw):
    conn = raw(str(memory_pool.spool / "taskpool.sock"))
    conn.hello()
    ok = Submit("raw-ok", "sample_tasks.add", [1, 2], {}, reply=False)
    bad = Submit("raw-bad", "no.such.task", [], {}, reply=False)
    conn.send(ok, bad, QueryMany([]), Query("raw-ok", 30.0))
    refusal, barrier, info = conn.recv(), conn.recv(), conn.recv()
    assert isinstance(refusal, Error) and (refusal.code, refusal.task_id) == ("unknown_task", "raw-bad")
    assert isinstance(barrier, TaskInfos) and barrier.infos == []
    assert isinstance(info, TaskInfo) and (info.status, info.result) == ("SUCCESSFUL", 3)


class OneShotSupervisor:
    """A listener that greets like a memory-store supervisor, reads every frame a client sends
    until it closes or the connection is closed here, and records them per connection. With
    ``die_after_barrier`` it closes the first connection once the barrier arrives, unanswered,
    as a supervisor that handled a batch and died would."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen()
        self.listener.settimeout(10)
        self.received: list[list] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            frames: list = []
            self.received.append(frames)
            decoder = Decoder(DEFAULT_MAX_FRAME)
            with conn:
                conn.settimeout(10)
                while not any(isinstance(m, QueryMany) for m in frames):
                    try:
                        data = conn.recv(1 << 16)
                    except OSError:
                        break
                    if not data:
                        break
                    for msg in decoder.feed(data):
                        if isinstance(msg, Hello):
                            conn.sendall(encode(Welcome(PROTOCOL_VERSION, os.getpid(), "memory", "")))
                        else:
                            frames.append(msg)

    def close(self) -> None:
        self.listener.close()
        self.thread.join(10)


def test_a_quiet_batch_is_never_sent_twice(tmp_path):
    """Silence from the supervisor no longer means it did nothing: a batch it handled before it
    died must not run again on the next connection (nor be reported submitted)."""
    fake = OneShotSupervisor(str(tmp_path / "s.sock"))
    try:
        client = Client(fake.path, timeout=5)
        with pytest.raises(taskpool.SupervisorUnavailable, match="lost the connection"):
            taskpool.submit_many([(sample_tasks.add, (i, i)) for i in range(50)], client=client,
                                 store=open_store("memory", ""))
        submits = [[m for m in frames if isinstance(m, Submit)] for frames in fake.received]
        assert [len(s) for s in submits] == [50]  # one connection, the batch once
    finally:
        fake.close()


def test_a_quiet_batch_goes_on_a_fresh_connection_after_a_restart(start_supervisor, tmp_path):
    sup = start_supervisor("--workers", "1", "--store", "memory")
    client = Client(str(sup.socket))
    store = open_store("memory", "")
    assert [h.result(timeout=30) for h in taskpool.submit_many([(sample_tasks.add, (1, 1))] * 2, client=client,
                                                                store=store)] == [2, 2]
    sup.signal(signal.SIGTERM)
    assert sup.wait_exit() == 0
    again = start_supervisor("--workers", "1", "--store", "memory", spool=sup.spool)
    handles = taskpool.submit_many([(sample_tasks.add, (2, 2))] * 2, client=client, store=store)
    assert [h.result(timeout=30) for h in handles] == [4, 4]
    assert again.stats()["counters"]["submitted"] == 2


def test_a_quiet_batch_is_not_answered_by_a_reply_left_unread(memory_pool):
    client = Client(str(memory_pool.spool / "taskpool.sock"))
    store = open_store("memory", "")
    done = taskpool.submit_many([(sample_tasks.add, (1, 1))], client=client, store=store)[0]
    assert done.result(timeout=30) == 2
    channel = client._channel()
    channel.send(QueryMany([done.id]))  # as an exchange interrupted before its reply was read
    wait_until(lambda: not channel.quiet(), timeout=10, message="the reply waits unread")
    with pytest.raises(taskpool.UnknownTask):  # this batch's own refusal, not the old TaskInfos as its barrier
        taskpool.submit_many([(sample_tasks.add, (3, 3)), ("no.such.task", ())], client=client, store=store)
    wait_until(lambda: memory_pool.stats()["counters"]["succeeded"] == 2, timeout=30, message="the 3 + 3 ran")


def test_submit_many_of_nothing_returns_nothing_even_with_the_supervisor_gone(tmp_path):
    for store in (open_store("memory", ""), open_store("sqlite", str(tmp_path / "spool"))):
        assert taskpool.submit_many([], client=Client(str(tmp_path / "nobody.sock")), store=store) == []
