"""The worker's loop over a real socketpair, this process standing for the supervisor: tasks
sent ahead run in order, and one cancelled before it started is answered without running,
wherever its Cancel lands among the frames queued behind the task in hand."""

from __future__ import annotations

import socket
import threading

import pytest
from helpers import wait_until

import taskpool
from taskpool.protocol import Cancel, Decoder, Done, Run, encode
from taskpool.transport import Channel
from taskpool.worker import serve

ran: list[int] = []
note = taskpool.task(lambda i: ran.append(i) or i, name="unit_worker.note")


def run_worker(frames: bytes) -> list[Done]:
    """Write ``frames`` to a worker loop, close our side, and return the Dones it wrote."""
    ours, theirs = socket.socketpair()
    for end in (ours, theirs):
        end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    try:
        theirs.sendall(frames)
        theirs.shutdown(socket.SHUT_WR)  # EOF after the frames: the worker's "exit now"
        serve(Channel(ours, 1 << 20, trusted=True), 1 << 20, False, 1, 1)
        ours.shutdown(socket.SHUT_WR)
        data = b"".join(iter(lambda: theirs.recv(1 << 16), b""))
    finally:
        ours.close()
        theirs.close()
    return list(Decoder(1 << 20).feed(data))  # type: ignore[arg-type]


@pytest.mark.parametrize("cancel_at", [1, 40, 99])
def test_a_task_cancelled_behind_a_long_queue_is_skipped(cancel_at):
    ran.clear()
    runs = b"".join(encode(Run(f"t{i}", "unit_worker.note", [i], {}, 1)) for i in range(100))
    dones = run_worker(runs + encode(Cancel(f"t{cancel_at}")))
    assert [d.task_id for d in dones] == [f"t{i}" for i in range(100)]  # one Done each, in order
    skipped = [d for d in dones if not d.ok]
    assert [d.task_id for d in skipped] == [f"t{cancel_at}"]
    assert skipped[0].error["type"] == "taskpool.errors.Cancelled"
    assert ran == [i for i in range(100) if i != cancel_at]  # it never ran; the others did, in order


def test_a_cancel_of_an_id_not_queued_changes_nothing():
    ran.clear()
    frames = encode(Run("a", "unit_worker.note", [1], {}, 1)) + encode(Cancel("zz")) + encode(
        Run("b", "unit_worker.note", [2], {}, 1))
    dones = run_worker(frames)
    assert [(d.task_id, d.ok, d.result) for d in dones] == [("a", True, 1), ("b", True, 2)]
    assert ran == [1, 2]


def test_the_title_changes_only_when_the_state_does(monkeypatch):
    """Back-to-back tasks of one name set the title once; "idle" comes when the worker is
    about to sleep (here at EOF, after the last task), not after every task."""
    shown: list[str] = []
    monkeypatch.setattr("taskpool.titles.set_title", shown.append)
    ran.clear()
    runs = b"".join(encode(Run(f"t{i}", "unit_worker.note", [i], {}, 1)) for i in range(5))
    dones = run_worker(runs)
    assert [d.ok for d in dones] == [True] * 5
    assert shown[:2] == ["worker 1 gen 1 idle", "worker 1 gen 1 busy unit_worker.note"]
    assert shown.count("worker 1 gen 1 busy unit_worker.note") == 1


def test_a_worker_that_waits_for_its_next_task_shows_itself_idle(monkeypatch):
    shown: list[str] = []
    monkeypatch.setattr("taskpool.titles.set_title", shown.append)
    ours, theirs = socket.socketpair()
    worker = threading.Thread(target=serve, args=(Channel(ours, 1 << 20, trusted=True), 1 << 20, False, 2, 3))
    worker.start()
    try:
        theirs.sendall(encode(Run("a", "unit_worker.note", [1], {}, 1)))
        decoder = Decoder(1 << 20)
        theirs.settimeout(10)
        done = next(iter(decoder.feed(theirs.recv(1 << 16))))
        assert isinstance(done, Done) and done.ok
        wait_until(lambda: shown[-1:] == ["worker 3 gen 2 idle"], message="the idle title after the task")
        assert shown == ["worker 3 gen 2 idle", "worker 3 gen 2 busy unit_worker.note", "worker 3 gen 2 idle"]
    finally:
        theirs.shutdown(socket.SHUT_WR)  # EOF: the worker loop returns
        worker.join(10)
        ours.close()
        theirs.close()
    assert not worker.is_alive()
