"""The rows the supervisor sends its recorder: lists in TaskRow's column order."""

from __future__ import annotations

from taskpool.ledger import Ledger
from taskpool.protocol import Submit
from taskpool.recording import snapshot
from taskpool.stores.base import TaskRow


def test_a_snapshot_is_every_column_in_taskrow_order():
    ledger = Ledger(10)
    task = ledger.accept(Submit("t1", "mod.task", [1, "a"], {"k": 2}, 5, 123.0, 4, 9.5, "q", True), None, 100.0)
    ready = TaskRow(*snapshot(task, "sup"))
    ready.args = list(ready.args)  # the supervisor keeps arguments as a tuple; msgpack sends an array either way
    assert ready == TaskRow("t1", "mod.task", [1, "a"], {"k": 2}, "q", 5, 123.0, 9.5, 4, "READY", 0, 100.0,
                            held_by="sup")
    assert (ready.started_at, ready.progress, ready.result, ready.errors, ready.worker_ids) == (None, None, None, [], [])
    ledger.start(task, 4242)
    ledger.report_progress(task, 50.0, "half")
    ledger.succeed(task, {"r": 1})
    done = TaskRow(*snapshot(task, "sup"))
    assert (done.status, done.attempts, done.worker_ids, done.result) == ("SUCCESSFUL", 1, [4242], {"r": 1})
    assert (done.progress, done.progress_message, done.held_by) == (100.0, "half", "sup")
    assert done.started_at == done.last_attempted_at == task.started_at and done.finished_at == task.finished_at
    assert done.finished_at >= done.started_at > 0
