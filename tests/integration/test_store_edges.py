"""Edge cases of the durable path: limits checked before writing, bad retry delays,
a store that cannot be opened, and batches split to fit a frame."""

from __future__ import annotations

import durable_tasks
import pytest
import sample_tasks

import taskpool
from taskpool.protocol import DEFAULT_MAX_FRAME, Decoder, Record, encode_chunks


def test_arguments_over_the_frame_limit_are_refused_before_a_row_is_written(supervisor):
    before = supervisor.store.counts()
    with pytest.raises(taskpool.InvalidArguments, match="frame limit"):
        supervisor.submit(sample_tasks.echo, "x" * (DEFAULT_MAX_FRAME + 10))
    assert supervisor.store.counts() == before
    assert supervisor.submit(sample_tasks.add, 1, 2).result(timeout=10) == 3


def test_retry_with_a_delay_that_is_not_a_number_still_retries(start_supervisor, tmp_path):
    sup = start_supervisor("--workers", "1", imports=("sample_tasks", "durable_tasks"))
    handle = sup.submit(durable_tasks.retry_with_bad_delay, str(tmp_path / "marker"))
    assert handle.result(timeout=20) == "second attempt"
    info = handle.refresh()
    assert info.attempts == 2
    assert info.errors[0]["type"] == "taskpool.errors.Retry"
    assert sup.stats()["counters"]["worker_crashes"] == 0


def test_a_store_that_cannot_be_opened_stops_the_start_with_a_clear_message(start_supervisor, tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o700)
    (spool / "taskpool.sqlite3").mkdir()  # a directory where the database file should be
    sup = start_supervisor("--workers", "1", spool=spool, wait=False)
    assert sup.wait_exit(30) == 3
    assert "cannot open the sqlite store" in sup.log()


def test_batches_are_split_to_fit_a_frame():
    rows = [[str(i), "mod.task", ["x" * 1000]] for i in range(50)]
    parts = encode_chunks(lambda chunk: Record(1, chunk), rows, 10_000)
    assert len(parts) > 1
    assert all(len(frame) - 4 <= 10_000 for _, frame in parts)
    decoded = [row for _, frame in parts for msg in Decoder(10_000).feed(frame) for row in msg.rows]
    assert decoded == rows


def test_sigkill_of_the_supervisor_alone_frees_its_tasks_at_once(start_supervisor, tmp_path):
    import os
    import signal

    from helpers import pid_gone, wait_until

    spool = tmp_path / "spool"
    sup = start_supervisor("--workers", "1", spool=spool)
    running = sup.submit(sample_tasks.wait_for_file.using(timeout=5), str(tmp_path / "never"))
    wait_until(lambda: running.status == "RUNNING")
    queued = [sup.submit(sample_tasks.add, i, i) for i in range(3)]
    # status reaches the store up to 0.1 s late (batched): killed before that, the row would
    # still say READY and the re-run would not count an attempt (documented in reliability.md)
    wait_until(lambda: sup.store.fetch(running.id).status == "RUNNING", message="the row RUNNING")
    children = sup.children()
    os.kill(sup.pid, signal.SIGKILL)  # not the process group: the workers are orphaned
    wait_until(lambda: all(pid_gone(p) for p in children), message="orphaned workers to die with it")
    again = start_supervisor("--workers", "1", spool=spool)
    assert [h.result(timeout=10) for h in queued] == [0, 2, 4]
    retried = again.handle(running.id)
    with pytest.raises(taskpool.TaskFailed):  # re-run, then its 5 s timeout is enforced again
        retried.result(timeout=20)
    info = retried.refresh()
    assert info.errors[0]["type"] == "taskpool.errors.WorkerLost"
    assert info.errors[-1]["type"] == "taskpool.errors.TaskTimeout"
