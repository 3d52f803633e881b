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


def test_a_dead_recorders_unacknowledged_batches_come_back_with_each_tasks_latest_state():
    from taskpool.recorder import RecorderSettings
    from taskpool.recording import RecorderLink

    link = RecorderLink(RecorderSettings("sqlite", "/nonexistent", "sup", 60.0, 1 << 20, 0.0),
                        lambda: None, lambda conn, cb: None, lambda conn: None, lambda conn: None, lambda msg, now: None)
    ledger = Ledger(10)
    a = ledger.accept(Submit("a", "mod.task", [], {}, stored=True), None, 1.0)
    b = ledger.accept(Submit("b", "mod.task", [], {}, stored=True), None, 1.0)
    ledger.start(a, 7)
    running_a = snapshot(a, "sup")
    ledger.succeed(a, 1)
    link.pid = 4242
    link.in_flight = {1: (0.0, [running_a, ["b", "sup"]]), 2: (0.0, [snapshot(a, "sup")])}
    ledger.start(b, 7)
    link.note(b)  # noted after both batches left: newer than anything in flight
    link.exited(9, 5.0)
    assert TaskRow(*link.pending["a"]).status == "SUCCESSFUL"  # not the older RUNNING of batch 1
    assert link.pending["b"] is b and not link.in_flight


def test_a_batch_leaves_after_the_write_delay_at_once_when_full_and_never_past_two_in_flight(monkeypatch):
    """``next_write_at``, which the supervisor's loop waits on: a status change waits up to
    WRITE_DELAY for others to share its transaction; 500 pending leave at once; with two
    batches unacknowledged nothing leaves (the recorder's answer wakes the loop instead)."""
    from taskpool import recording
    from taskpool.recorder import RecorderSettings
    from taskpool.recording import MAX_BATCH, MAX_IN_FLIGHT, WRITE_DELAY, RecorderLink

    link = RecorderLink(RecorderSettings("sqlite", "/nonexistent", "sup", 60.0, 1 << 20, 0.0),
                        lambda: None, lambda conn, cb: None, lambda conn: None, lambda conn: None, lambda msg, now: None)
    link.conn = object()  # type: ignore[assignment]  # a recorder is connected; nothing is written here
    assert link.next_write_at() is None  # nothing pending
    monkeypatch.setattr(recording.time, "monotonic", lambda: 50.0)
    ledger = Ledger(10)
    first = ledger.accept(Submit("t0", "mod.task", [], {}), None, 1.0)
    link.note(first)
    assert link.next_write_at() == 50.0 + WRITE_DELAY == 50.1
    monkeypatch.setattr(recording.time, "monotonic", lambda: 50.05)
    link.note(ledger.accept(Submit("t1", "mod.task", [], {}), None, 1.0), hold_only=True)
    assert link.next_write_at() == 50.1  # the first pending change sets the time
    for i in range(2, MAX_BATCH):
        link.note(ledger.accept(Submit(f"t{i}", "mod.task", [], {}), None, 1.0))
    assert len(link.pending) == MAX_BATCH and link.next_write_at() == 0.0
    link.in_flight = {seq: (0.0, []) for seq in range(1, MAX_IN_FLIGHT + 1)}
    assert link.next_write_at() is None
    link.conn = None
    link.in_flight = {}
    assert link.next_write_at() is None  # no recorder: nothing can leave
