"""submit()/submit_many() without a real supervisor: what is checked before any write,
when a Submit asks for a reply, the task id format, the remembered default client and
store, and the socket timeout the client sets only when it changes."""

from __future__ import annotations

import logging
import os
import socket
import uuid

import pytest

import taskpool
from taskpool import client as client_module
from taskpool.client import Client, build_submit, new_task_id, submit_many
from taskpool.errors import ConfigError, InvalidArguments, SupervisorUnavailable
from taskpool.protocol import DEFAULT_MAX_FRAME, Decoder, Error, Query, Submit
from taskpool.stores import open_store
from taskpool.transport import Channel

known_task = taskpool.task(lambda x: x, name="unit_client.known", priority=5, timeout=7.0, queue_name="q",
                           max_attempts=2)


class FakeClient(Client):
    """A client whose supervisor is up and has accepted ``accepted`` on this connection."""

    def __init__(self, path: str, accepted: set[str]) -> None:
        super().__init__(path)
        self.accepted = accepted
        self.sent: list[bytes] = []
        self.exchanged: list[list] = []

    def known_names(self) -> set[str]:
        return self.accepted

    def send_only(self, data: bytes) -> None:
        self.sent.append(data)

    def exchange(self, msgs, wait=0.0, data=None):  # type: ignore[override]
        self.exchanged.append(list(msgs))
        return [None for _ in msgs]  # an Accepted each, as far as _notify cares

    def submit_quietly(self, msgs, data):  # type: ignore[override]
        self.quiet.append(list(msgs))
        if self.unavailable:
            raise SupervisorUnavailable("lost the connection (as if the supervisor died)")
        return []


def quiet_client(path: str, unavailable: bool = False) -> FakeClient:
    client = FakeClient(path, set())
    client.quiet, client.unavailable = [], unavailable
    return client


@pytest.fixture
def store(tmp_path):
    s = open_store("sqlite", str(tmp_path / "spool"))
    yield s
    s.close()


def frames(data: bytes) -> list[Submit]:
    return list(Decoder(DEFAULT_MAX_FRAME).feed(data))  # type: ignore[arg-type]


def test_task_ids_have_the_uuid4_hex_format():
    ids = {new_task_id() for _ in range(2000)}
    assert len(ids) == 2000
    for task_id in ids:
        parsed = uuid.UUID(task_id)
        assert parsed.hex == task_id and parsed.version == 4 and parsed.variant == uuid.RFC_4122


def test_build_submit_takes_the_registered_options():
    msg = build_submit(known_task, (1,), {"a": 2}, stored=True)
    assert (msg.name, msg.args, msg.kwargs, msg.priority, msg.timeout, msg.queue, msg.max_attempts) == (
        "unit_client.known", [1], {"a": 2}, 5, 7.0, "q", 2)
    assert msg.stored and msg.reply
    by_name = build_submit("elsewhere.task", [], {})
    assert (by_name.priority, by_name.timeout, by_name.queue, by_name.stored) == (None, None, None, False)


def test_a_stored_submit_of_known_names_asks_for_no_reply(tmp_path, store):
    client = FakeClient(str(tmp_path / "none.sock"), {"unit_client.known", "other.name"})
    handles = submit_many([(known_task, (1,)), ("other.name", [2], {"k": 3})], client=client, store=store)
    assert not client.exchanged and len(client.sent) == 1
    sent = frames(client.sent[0])
    assert [m.reply for m in sent] == [False, False] and all(m.stored for m in sent)
    assert [m.task_id for m in sent] == [h.id for h in handles]
    row = store.fetch(handles[1].id)
    assert (row.name, row.args, row.kwargs, row.status, row.queue) == ("other.name", [2], {"k": 3}, "READY", "default")
    assert store.fetch(handles[0].id).priority == 5


def test_one_unknown_name_makes_the_whole_batch_wait_for_replies(tmp_path, store):
    client = FakeClient(str(tmp_path / "none.sock"), {"unit_client.known"})
    submit_many([(known_task, (1,)), ("new.name", [])], client=client, store=store)
    assert not client.sent
    assert [[m.reply for m in batch] for batch in client.exchanged] == [[True, True]]
    assert "new.name" in client.accepted  # accepted now: the next submit of it sends no reply request


def test_bad_input_writes_and_sends_nothing(tmp_path, store):
    client = FakeClient(str(tmp_path / "none.sock"), {"unit_client.known"})
    for call in [(known_task, (1,), {"bad": object()}), (known_task, (float("nan"),)), (42, ())]:
        with pytest.raises((InvalidArguments, TypeError)):
            submit_many([(known_task, (0,)), call], client=client, store=store)
    big = Client(str(tmp_path / "none.sock"), max_frame=200)
    big.known_names = lambda: {"unit_client.known"}  # type: ignore[method-assign]
    with pytest.raises(InvalidArguments, match="frame limit"):
        submit_many([(known_task, ("x" * 500,))], client=big, store=store)
    assert store.counts() == {} and not client.sent and not client.exchanged


def test_with_the_supervisor_down_the_row_waits(tmp_path, store, caplog):
    client = Client(str(tmp_path / "nobody-listens.sock"))
    with caplog.at_level(logging.WARNING, logger="taskpool.client"):
        handle = submit_many([(known_task, (1,))], client=client, store=store)[0]
    assert store.fetch(handle.id).status == "READY"
    assert "no supervisor" in caplog.text


def test_a_memory_batch_asks_for_refusals_only_and_one_task_for_its_reply(tmp_path):
    client, memory = quiet_client(str(tmp_path / "none.sock")), open_store("memory", "")
    submit_many([(known_task, (1,)), (known_task, (2,))], client=client, store=memory)
    assert [[(m.reply, m.stored) for m in batch] for batch in client.quiet] == [[(False, False), (False, False)]]
    submit_many([(known_task, (3,))], client=client, store=memory)
    assert [[m.reply for m in batch] for batch in client.exchanged] == [[True]]


def test_a_memory_batch_that_lost_the_supervisor_raises(tmp_path):
    client = quiet_client(str(tmp_path / "none.sock"), unavailable=True)
    with pytest.raises(SupervisorUnavailable):  # nothing was stored: the caller must know
        submit_many([(known_task, (1,)), (known_task, (2,))], client=client, store=open_store("memory", ""))


def test_the_memory_store_needs_the_supervisor(tmp_path):
    with pytest.raises(SupervisorUnavailable):
        submit_many([(known_task, (1,))], client=Client(str(tmp_path / "x.sock")), store=open_store("memory", ""))


def test_default_client_and_store_follow_settings_environment_and_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TASKPOOL_SPOOL", raising=False)
    monkeypatch.delenv("TASKPOOL_SOCKET", raising=False)
    monkeypatch.delenv("TASKPOOL_STORE", raising=False)
    taskpool.configure(spool="a")
    first = client_module.default_client()
    assert first.path == str(tmp_path / "a" / "taskpool.sock")
    assert client_module.default_client() is first  # remembered
    store_a = client_module.default_store()
    assert store_a.spool == str(tmp_path / "a") and client_module.default_store() is store_a

    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")  # a relative spool follows the working directory
    assert client_module.default_client().path == str(tmp_path / "sub" / "a" / "taskpool.sock")
    assert client_module.default_store().spool == str(tmp_path / "sub" / "a")

    monkeypatch.setenv("TASKPOOL_SOCKET", str(tmp_path / "elsewhere.sock"))
    assert client_module.default_client().path == str(tmp_path / "elsewhere.sock")
    monkeypatch.delenv("TASKPOOL_SOCKET")

    taskpool.configure(spool="", store="")
    monkeypatch.setenv("TASKPOOL_SPOOL", str(tmp_path / "b"))
    assert client_module.default_client().path == str(tmp_path / "b" / "taskpool.sock")
    assert client_module.default_store().spool == str(tmp_path / "b")
    monkeypatch.setenv("TASKPOOL_STORE", "memory")
    assert client_module.default_store().name == "memory"

    client = client_module.default_client()
    taskpool.configure(timeout=3.0)  # a new default client, with the new timeout
    again = client_module.default_client()
    assert again is not client and again.timeout == 3.0 and again.path == client.path


def test_the_quick_environment_reader_sees_every_change_at_once(monkeypatch):
    """_env skips os.environ.get for an unset name by looking in os.environ's own table: a
    variable set, changed or removed through os.environ is seen by the next call, and a
    replaced os.environ is read through its get."""
    assert client_module._ENVIRON is os.environ  # CPython: the quick path is the one tested here
    for name in client_module._ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
        assert client_module._env(name) is None
        monkeypatch.setenv(name, "one")
        assert client_module._env(name) == "one"
        monkeypatch.setenv(name, "two é")
        assert client_module._env(name) == "two é"
        monkeypatch.delenv(name)
        assert client_module._env(name) is None
    monkeypatch.setattr(os, "environ", {"TASKPOOL_STORE": "memory"})
    assert client_module._env("TASKPOOL_STORE") == "memory" and client_module._env("TASKPOOL_SPOOL") is None


def test_the_environment_reader_without_its_quick_path(monkeypatch):
    """Where os.environ is not the object (or layout) it was made for, _env is os.environ.get."""
    monkeypatch.setattr(client_module, "_ENVIRON", None)
    monkeypatch.setenv("TASKPOOL_SPOOL", "/srv/spool")
    monkeypatch.delenv("TASKPOOL_STORE", raising=False)
    assert client_module._env("TASKPOOL_SPOOL") == "/srv/spool" and client_module._env("TASKPOOL_STORE") is None
    monkeypatch.setenv("SOMETHING_ELSE", "x")  # and a name it was not made for, either way
    assert client_module._env("SOMETHING_ELSE") == "x"
    monkeypatch.undo()
    monkeypatch.setenv("SOMETHING_ELSE", "y")
    assert client_module._env("SOMETHING_ELSE") == "y" and client_module._env("NOT_SET_ANYWHERE_42") is None


def test_submit_and_submit_many_report_the_same_error_first(tmp_path, monkeypatch):
    """A store that cannot be opened is reported before bad arguments, by both entry points."""
    taskpool.configure(spool=str(tmp_path), store="", socket="")
    monkeypatch.setenv("TASKPOOL_STORE", "no-such-store")
    with pytest.raises(ConfigError, match="no-such-store"):
        taskpool.submit(known_task, object())
    with pytest.raises(ConfigError, match="no-such-store"):
        submit_many([(known_task, (object(),))])
    monkeypatch.setenv("TASKPOOL_STORE", "memory")
    with pytest.raises(InvalidArguments):  # then the arguments, before any connection is tried
        taskpool.submit(known_task, object())


def test_immediate_mode_follows_the_environment(monkeypatch):
    monkeypatch.setitem(client_module._settings, "immediate", None)  # not configured: the environment decides
    monkeypatch.delenv("TASKPOOL_IMMEDIATE", raising=False)
    assert not client_module.immediate_mode()
    monkeypatch.setenv("TASKPOOL_IMMEDIATE", "1")
    assert client_module.immediate_mode()
    monkeypatch.setenv("TASKPOOL_IMMEDIATE", "false")
    assert not client_module.immediate_mode()


def connected(client: Client) -> socket.socket:
    """Give ``client`` a channel on a socket pair, as a handshake would; the far end."""
    ours, theirs = socket.socketpair()
    ours.settimeout(client.timeout)
    local = client._local
    local.channel, local.pid = Channel(ours, DEFAULT_MAX_FRAME), os.getpid()
    local.known_names = set()
    return theirs


def test_the_channel_timeout_follows_each_request(tmp_path):
    client = Client(str(tmp_path / "x.sock"), timeout=4.0)
    far = connected(client)
    channel = client._local.channel
    assert channel.sock.gettimeout() == 0.0  # the channel waits in poll(), not in the socket
    client.send_only(b"abc")
    assert far.recv(3) == b"abc" and channel.timeout == 4.0
    far.sendall(client.encode([Error("not_found", "no such task")]))
    client.exchange([Query("t" * 32, 2.5)], wait=2.5)
    assert channel.timeout == 6.5  # the wait on top of the timeout
    client.send_only(b"d")
    assert channel.timeout == 4.0
    client.timeout = 5.0
    client.send_only(b"e")
    assert channel.timeout == 5.0
    far.close()
