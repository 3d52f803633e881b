"""Scheduler decisions that need no process: adoption from the store meets a Submit."""

from __future__ import annotations

from taskpool.protocol import Accepted, Error, Submit
from taskpool.scheduler import Scheduler
from taskpool.stores.base import TaskRow

DEFAULTS = {"mod.known": {"priority": 0, "queue": "default", "max_attempts": 3, "timeout": None,
                          "retry_on_timeout": False, "retry_backoff": 1.0, "retry_backoff_max": 600.0}}


def scheduler() -> Scheduler:
    s = Scheduler(keep_finished=100, max_ready=10, durable=True)
    s.task_defaults = dict(DEFAULTS)
    return s


def test_an_adopted_row_with_an_unknown_name_is_failed_not_queued():
    s = scheduler()
    s.adopt([TaskRow("t1", "os.system", ["rm -rf /"], {}).as_dict()], now=0.0)
    task = s.ledger.get("t1")
    assert task.status == "FAILED" and task.errors[-1]["type"] == "taskpool.errors.UnknownTask"
    assert len(s.ready) == 0 and s.next_ready() is None


def test_a_submit_arriving_after_its_row_was_adopted_still_gets_unknown_task():
    s = scheduler()
    s.adopt([TaskRow("t1", "os.system", [], {}).as_dict()], now=0.0)
    reply = s.submit(Submit("t1", "os.system", [], {}, stored=True), now=0.0)
    assert isinstance(reply, Error) and reply.code == "unknown_task"


def test_a_submit_arriving_after_its_known_row_was_adopted_is_accepted_once():
    s = scheduler()
    s.adopt([TaskRow("t1", "mod.known", [1], {}).as_dict()], now=0.0)
    assert isinstance(s.submit(Submit("t1", "mod.known", [1], {}, stored=True), now=0.0), Accepted)
    assert len(s.ready) == 1 and s.ledger.counters["adopted"] == 1 and s.ledger.counters["submitted"] == 0


def test_a_connection_closed_with_output_queued_flushes_as_a_no_op():
    import socket

    from taskpool.protocol import Recorded
    from taskpool.transport import Closed, FramedConnection

    ours, theirs = socket.socketpair()
    conn = FramedConnection(ours, 1 << 20, 1 << 20)
    conn.send(Recorded(1))
    conn.close()  # e.g. EOF seen in the same pass that queued the frame
    assert conn.flush() is True  # no write on a closed descriptor (EBADF would stop the loop)
    try:
        conn.send(Recorded(2))
    except Closed:
        pass
    else:
        raise AssertionError("sending on a closed connection must raise Closed")
    theirs.close()


def test_room_promised_to_a_pull_under_way_is_not_given_to_direct_submits():
    # CI found ready+delayed at max_ready + 1: a pull asked for the last free slot, a direct
    # Submit took it, then the pulled row arrived on top.
    s = scheduler()
    for i in range(8):
        assert isinstance(s.submit(Submit(f"t{i}", "mod.known", [], {}, stored=True), now=0.0), Accepted)
    s.promised = lambda: 2  # a pull for the two free slots is under way
    assert s.room() == 0
    unstored = s.submit(Submit("direct", "mod.known", [], {}), now=0.0)
    assert isinstance(unstored, Error) and unstored.code == "queue_full"
    assert isinstance(s.submit(Submit("stored", "mod.known", [], {}, stored=True), now=0.0), Accepted)
    assert s.ledger.get("stored") is None and s.backlog_in_store  # left on disk for a later sweep
    s.adopt([TaskRow(f"p{i}", "mod.known", [], {}).as_dict() for i in range(2)], now=0.0)
    s.promised = lambda: 0
    assert s.queued() == s.max_ready
