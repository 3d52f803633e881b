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
