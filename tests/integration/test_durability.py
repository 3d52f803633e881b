"""Durability: the store, the recorder, recovery after crashes, retries, persisted options.

Every test runs real supervisors (and forks of this process where a different
process is the point). Figures worth watching (recovery time after a restart, how
fast a purge or a drain happens) are printed; run with ``-s`` to see them.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import select
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import durable_tasks
import pytest
import sample_tasks
from helpers import pid_gone, wait_until

import taskpool
from taskpool.client import Client, submit_many
from taskpool.stores import open_store

IMPORTS = ("sample_tasks", "durable_tasks")
FINAL = {"SUCCESSFUL", "FAILED", "CANCELLED"}
DB_NAME = "taskpool.sqlite3"


# -- helpers ---------------------------------------------------------------------


def offline_submit(spool: Path, *calls: tuple) -> list[taskpool.TaskHandle]:
    """submit_many() as a web process would do it: its own client and store, on ``spool``."""
    return submit_many(list(calls), client=Client(str(spool / "taskpool.sock")), store=open_store("sqlite", str(spool)))


def attempt_times(log: Path) -> list[float]:
    """The wall-clock times a durable_tasks task wrote, one line per attempt."""
    return [float(line) for line in log.read_text().splitlines()] if log.exists() else []


def stamped(log: Path) -> list[tuple[str, float]]:
    """(label, time) lines written by durable_tasks.stamp, in the order they ran."""
    return [(label, float(at)) for label, at in (line.split() for line in log.read_text().splitlines())]


def gaps(times: list[float]) -> list[float]:
    return [round(b - a, 3) for a, b in zip(times, times[1:], strict=False)]


def statuses(store: Any, handles: list[taskpool.TaskHandle]) -> list[str | None]:
    rows = [store.fetch(h.id) for h in handles]
    return [None if r is None else r.status for r in rows]


def total_rows(store: Any) -> int:
    return sum(store.counts().values())


def stays_false(condition: Callable[[], Any], duration: float, message: str) -> None:
    """Assert ``condition`` stays falsy for ``duration`` seconds (checked every 50 ms)."""
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        assert not condition(), message
        time.sleep(0.05)
    assert not condition(), message


def run_in_child(fn: Callable[[], Any], timeout: float = 30.0) -> dict:
    """Run ``fn`` in a forked child; return its report: {"value": ...} or {"error": type, "message": ...}.

    The report comes back as JSON through a pipe; the child is always reaped."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report, then leave without running any of the parent's cleanup
        try:
            os.close(read_end)
            try:
                report = {"value": fn()}
            except BaseException as exc:  # reported to the parent
                report = {"error": type(exc).__name__, "message": str(exc)}
            data = json.dumps(report).encode()
            while data:
                data = data[os.write(write_end, data):]
        finally:
            os._exit(0)
    os.close(write_end)
    chunks: list[bytes] = []
    finished = False
    try:
        deadline = time.monotonic() + timeout
        while not finished:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"child {pid} did not report within {timeout}s")
            if select.select([read_end], [], [], remaining)[0]:
                chunk = os.read(read_end, 65536)
                chunks.append(chunk)
                finished = not chunk
    finally:
        os.close(read_end)
        if not finished:
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return json.loads(b"".join(chunks))


def new_recorder_pid(sup: Any, not_these: list[int]) -> int | None:
    pid = sup.stats()["recorder"]["pid"]
    return pid if pid is not None and pid not in not_these else None


def assert_supervisor_unaffected(sup: Any) -> None:
    assert sup.proc.poll() is None and not pid_gone(sup.pid)
    assert sup.submit(sample_tasks.add, 40, 2).result(timeout=15) == 42


# -- 1. submit with no supervisor -------------------------------------------------------


def test_submit_without_a_supervisor_stores_rows_that_the_next_supervisor_adopts(start_supervisor, tmp_path, caplog):
    spool = tmp_path / "spool"
    with caplog.at_level(logging.WARNING, logger="taskpool.client"):
        handles = offline_submit(spool, *[(sample_tasks.add, (i, i)) for i in range(5)])
    assert len(handles) == 5 and all(isinstance(h, taskpool.TaskHandle) for h in handles)
    warnings = [r.getMessage() for r in caplog.records if r.name == "taskpool.client" and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "no supervisor" in warnings[0] and "5 task(s) stored" in warnings[0]

    store = open_store("sqlite", str(spool))
    rows = [store.fetch(h.id) for h in handles]
    assert [r.status for r in rows] == ["READY"] * 5
    assert all(r.held_by is None and r.attempts == 0 and r.name == "sample_tasks.add" for r in rows)
    assert [r.args for r in rows] == [[i, i] for i in range(5)]
    assert [h.status for h in handles] == ["READY"] * 5  # the handles answer from the store

    started = time.monotonic()
    sup = start_supervisor("--workers", "2", spool=spool, wait=False)
    assert [h.result(timeout=10) for h in handles] == [0, 2, 4, 6, 8]
    elapsed = time.monotonic() - started
    print(f"\n[durability] offline rows done {elapsed:.2f}s after the supervisor was started")
    assert elapsed < 5
    wait_until(lambda: statuses(store, handles) == ["SUCCESSFUL"] * 5, message="SUCCESSFUL rows in the store")
    counters = sup.stats()["counters"]
    assert counters["adopted"] == 5 and counters["submitted"] == 0 and counters["succeeded"] == 5
    assert all(store.fetch(h.id).attempts == 1 for h in handles)


# -- 2. the supervisor and all its children SIGKILLed -------------------------------------


def test_supervisor_killed_with_its_children_reruns_running_tasks_after_restart(start_supervisor, tmp_path):
    spool, gate = tmp_path / "spool", tmp_path / "gate"
    sup = start_supervisor("--workers", "3", spool=spool, imports=IMPORTS)
    old_id = sup.stats()["supervisor_id"]
    logs = [tmp_path / f"attempts{i}" for i in range(7)]
    handles = [sup.submit(durable_tasks.hold, str(gate), str(logs[i]), f"t{i}") for i in range(7)]
    # three run (one per worker), four wait; wait until the store says so and names the holder
    wait_until(lambda: sorted(statuses(sup.store, handles)) == ["READY"] * 4 + ["RUNNING"] * 3,
               message="3 RUNNING and 4 READY rows in the store")
    wait_until(lambda: all(sup.store.fetch(h.id).held_by == old_id for h in handles), message="rows held")
    running = [h for h in handles if sup.store.fetch(h.id).status == "RUNNING"]
    waiting = [h for h in handles if h not in running]
    assert all(len(attempt_times(logs[handles.index(h)])) == 1 for h in running)

    children = sup.children()
    assert len(children) == 4  # three workers and the recorder
    assert sup.stats()["recorder"]["pid"] in children
    os.killpg(sup.pid, signal.SIGKILL)
    assert sup.wait_exit(5) == -signal.SIGKILL
    wait_until(lambda: all(pid_gone(p) for p in children), timeout=5, message="every child gone")
    assert statuses(sup.store, running) == ["RUNNING"] * 3  # nobody touched the rows
    assert statuses(sup.store, waiting) == ["READY"] * 4

    gate.touch()
    started = time.monotonic()
    again = start_supervisor("--workers", "3", spool=spool, imports=IMPORTS, wait=False)
    wait_until(lambda: all(s in FINAL for s in statuses(again.store, handles)), timeout=15,
               message="every task final after the restart")
    recovery = time.monotonic() - started
    print(f"\n[durability] all 7 tasks final {recovery:.2f}s after the restart (3 were running when killed)")
    assert recovery < 10

    assert statuses(again.store, handles) == ["SUCCESSFUL"] * 7
    assert [again.handle(h.id).result(timeout=5) for h in handles] == [f"t{i}" for i in range(7)]
    for h in running:
        row = again.store.fetch(h.id)
        assert row.attempts == 2 and len(attempt_times(logs[handles.index(h)])) == 2
        assert len(row.errors) == 1
        assert row.errors[0]["type"] == "taskpool.errors.WorkerLost"
        assert old_id in row.errors[0]["message"]
        assert row.held_by == again.stats()["supervisor_id"]
    for h in waiting:
        row = again.store.fetch(h.id)
        assert row.attempts == 1 and row.errors == [] and len(attempt_times(logs[handles.index(h)])) == 1
    counters = again.stats()["counters"]
    assert counters["adopted"] == 7 and counters["succeeded"] == 7 and counters["failed"] == 0
    assert old_id in again.log()  # "supervisor(s) <id> are gone"
    assert not (spool / "locks" / f"{old_id}.lock").exists()


# -- 3. the recorder killed again and again ------------------------------------------------


def test_recorder_killed_five_times_loses_no_status(start_supervisor):
    sup = start_supervisor("--workers", "2")
    handles = [sup.submit(sample_tasks.sleep, 0.05, i) for i in range(200)]
    killed: list[int] = []
    done_at_kill: list[int] = []
    for _ in range(5):
        pid = wait_until(lambda: new_recorder_pid(sup, killed), timeout=15, message="a new recorder")
        done_at_kill.append(sup.stats()["counters"]["succeeded"])
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)
        wait_until(lambda pid=pid: pid_gone(pid), timeout=5, message="recorder gone")
    print(f"\n[durability] tasks done in memory at each recorder kill: {done_at_kill}")
    assert done_at_kill[0] < 200  # the kills happened while tasks ran

    started = time.monotonic()
    wait_until(lambda: sup.store.counts().get("SUCCESSFUL") == 200, timeout=30, message="200 SUCCESSFUL rows")
    print(f"[durability] store caught up {time.monotonic() - started:.2f}s after the fifth kill")
    assert sup.store.counts() == {"SUCCESSFUL": 200}
    rows = [sup.store.fetch(h.id) for h in handles]
    assert [r.status for r in rows] == ["SUCCESSFUL"] * 200
    assert [r.result for r in rows] == list(range(200))
    assert all(r.attempts == 1 and r.errors == [] for r in rows)  # a recorder death costs tasks nothing
    recorder = sup.stats()["recorder"]
    assert recorder["restarts"] >= 5
    assert recorder["pid"] not in killed and not pid_gone(recorder["pid"])
    assert sup.stats()["counters"]["succeeded"] == 200


# -- 4. retries ----------------------------------------------------------------------------


def test_retry_for_with_backoff_then_success_or_failure(start_supervisor, tmp_path):
    sup = start_supervisor("--workers", "3", imports=IMPORTS)
    flaky_log, wrong_log, down_log = tmp_path / "flaky", tmp_path / "wrong", tmp_path / "down"
    flaky = sup.submit(durable_tasks.flaky, str(flaky_log))
    wrong = sup.submit(durable_tasks.wrong_error, str(wrong_log))
    down = sup.submit(durable_tasks.always_down, str(down_log))

    assert flaky.result(timeout=15) == 3
    info = flaky.refresh()
    assert info.status == "SUCCESSFUL" and info.attempts == 3
    assert [e["type"] for e in info.errors] == ["builtins.ConnectionError"] * 2
    assert "attempt 1" in info.errors[0]["message"] and "attempt 2" in info.errors[1]["message"]
    spacing = gaps(attempt_times(flaky_log))
    print(f"\n[durability] retry_backoff=0.2: attempts spaced {spacing}s")
    assert len(spacing) == 2
    assert spacing[0] >= 0.1 and spacing[1] >= 0.2  # backoff 0.2 then 0.4, jitter from the upper half

    with pytest.raises(taskpool.TaskFailed) as caught:
        wrong.result(timeout=10)
    assert caught.value.exception_type == "builtins.ValueError"
    assert wrong.refresh().attempts == 1 and len(attempt_times(wrong_log)) == 1

    with pytest.raises(taskpool.TaskFailed) as caught:
        down.result(timeout=15)
    assert caught.value.exception_type == "builtins.ConnectionError"
    info = down.refresh()
    assert info.status == "FAILED" and info.attempts == 3 and len(attempt_times(down_log)) == 3
    assert [e["type"] for e in info.errors] == ["builtins.ConnectionError"] * 3
    assert [e["message"] for e in info.errors] == [f"attempt {n}: still down" for n in (1, 2, 3)]

    # the store keeps the same story
    wait_until(lambda: statuses(sup.store, [flaky, wrong, down]) == ["SUCCESSFUL", "FAILED", "FAILED"],
               message="final rows in the store")
    assert sup.store.fetch(flaky.id).attempts == 3 and len(sup.store.fetch(flaky.id).errors) == 2
    assert sup.store.fetch(wrong.id).attempts == 1 and len(sup.store.fetch(wrong.id).errors) == 1
    assert [e["message"] for e in sup.store.fetch(down.id).errors] == [e["message"] for e in info.errors]
    assert sup.stats()["counters"]["retried"] == 4


def test_raise_retry_reruns_after_its_delay(start_supervisor, tmp_path):
    sup = start_supervisor("--workers", "1", imports=IMPORTS)
    log = tmp_path / "asked"
    handle = sup.submit(durable_tasks.asks_retry, str(log), 0.3)
    assert handle.result(timeout=10) == 2
    info = handle.refresh()
    assert info.attempts == 2
    assert [e["type"] for e in info.errors] == ["taskpool.errors.Retry"]
    spacing = gaps(attempt_times(log))
    print(f"\n[durability] Retry(delay=0.3): second attempt {spacing[0]}s after the first")
    assert spacing[0] >= 0.3


def test_timeouts_retry_only_when_listed_in_retry_for(start_supervisor, tmp_path):
    sup = start_supervisor("--workers", "2", imports=IMPORTS)
    retried_log, plain_log = tmp_path / "retried", tmp_path / "plain"
    retried = sup.submit(durable_tasks.slow_retried, str(retried_log))
    plain = sup.submit(durable_tasks.slow_not_retried, str(plain_log))

    for handle in (retried, plain):
        with pytest.raises(taskpool.TaskFailed) as caught:
            handle.result(timeout=15)
        assert caught.value.exception_type == "taskpool.errors.TaskTimeout"
    info = retried.refresh()
    assert info.status == "FAILED" and info.attempts == 2 and len(attempt_times(retried_log)) == 2
    assert [e["type"] for e in info.errors] == ["taskpool.errors.TaskTimeout"] * 2
    info = plain.refresh()
    assert info.status == "FAILED" and info.attempts == 1 and len(attempt_times(plain_log)) == 1
    assert [e["type"] for e in info.errors] == ["taskpool.errors.TaskTimeout"]
    wait_until(lambda: statuses(sup.store, [retried, plain]) == ["FAILED", "FAILED"], message="FAILED rows")
    assert len(sup.store.fetch(retried.id).errors) == 2 and len(sup.store.fetch(plain.id).errors) == 1
    assert sup.stats()["counters"]["timeouts"] == 3


# -- 5. priorities and delays persist -----------------------------------------------------------


def test_priorities_and_delay_of_offline_submits_are_kept(start_supervisor, tmp_path):
    spool, order = tmp_path / "spool", tmp_path / "order"
    stamp = durable_tasks.stamp
    handles = offline_submit(
        spool,
        (stamp.using(priority=0), (str(order), "p0")),
        (stamp.using(priority=10), (str(order), "p10")),
        (stamp.using(priority=5), (str(order), "p5")),
        (stamp.using(priority=100, delay=2), (str(order), "delayed")),  # top priority, but not before its time
    )
    store = open_store("sqlite", str(spool))
    rows = [store.fetch(h.id) for h in handles]
    assert [r.priority for r in rows] == [0, 10, 5, 100]
    assert [r.run_after is None for r in rows] == [True, True, True, False]
    run_after = rows[3].run_after

    sup = start_supervisor("--workers", "1", spool=spool, imports=IMPORTS)
    assert [h.result(timeout=15) for h in handles] == ["p0", "p10", "p5", "delayed"]
    ran = stamped(order)
    print(f"\n[durability] offline order {[label for label, _ in ran]}; delayed ran {ran[-1][1] - run_after:+.3f}s"
          " from its run_after")
    assert [label for label, _ in ran] == ["p10", "p5", "p0", "delayed"]
    assert ran[-1][1] >= run_after
    assert sup.stats()["counters"]["adopted"] == 4


def test_delayed_task_survives_a_stop_and_a_restart(start_supervisor, tmp_path):
    spool, log = tmp_path / "spool", tmp_path / "late"
    sup = start_supervisor("--workers", "1", spool=spool, imports=IMPORTS)
    handle = sup.submit(durable_tasks.stamp.using(delay=3), str(log), "late")
    sup_id = sup.stats()["supervisor_id"]
    run_after = sup.store.fetch(handle.id).run_after
    assert run_after > time.time() + 2
    wait_until(lambda: sup.store.fetch(handle.id).held_by == sup_id, message="the row recorded as held")
    assert sup.stats()["queue"]["delayed"] == 1

    sup.signal(signal.SIGTERM)
    assert sup.wait_exit(15) == 0
    assert time.time() < run_after, "the stop took too long for this test to mean anything"
    row = sup.store.fetch(handle.id)
    assert row.status == "READY" and row.run_after == run_after and row.attempts == 0
    assert not log.exists()

    again = start_supervisor("--workers", "1", spool=spool, imports=IMPORTS)
    assert again.handle(handle.id).result(timeout=15) == "late"
    [(label, at)] = stamped(log)
    print(f"\n[durability] delayed task across a restart ran {at - run_after:+.3f}s from its run_after")
    assert label == "late" and run_after <= at < run_after + 5
    wait_until(lambda: statuses(again.store, [handle]) == ["SUCCESSFUL"], message="the row SUCCESSFUL")
    assert again.store.fetch(handle.id).attempts == 1


# -- 6. cancel with no supervisor --------------------------------------------------------------


def test_cancel_with_no_supervisor_marks_the_row_and_it_never_runs(start_supervisor, tmp_path):
    spool, cancelled_ran, later_ran = tmp_path / "spool", tmp_path / "cancelled-ran", tmp_path / "later-ran"
    cancelled, later = offline_submit(
        spool,
        (durable_tasks.touch.using(priority=10), (str(cancelled_ran),)),  # would run first if it ran at all
        (durable_tasks.touch, (str(later_ran),)),
    )
    assert cancelled.status == "READY"
    assert cancelled.cancel() == "CANCELLED"
    store = open_store("sqlite", str(spool))
    row = store.fetch(cancelled.id)
    assert row.status == "CANCELLED" and row.finished_at is not None and row.attempts == 0
    assert store.fetch(later.id).status == "READY"

    sup = start_supervisor("--workers", "1", spool=spool, imports=IMPORTS)
    assert later.result(timeout=15) == str(later_ran)
    stays_false(cancelled_ran.exists, 3.0, "the cancelled task ran")  # past the next sweep too
    assert cancelled.status == "CANCELLED"
    with pytest.raises(taskpool.TaskFailed) as caught:
        cancelled.result(timeout=1)
    assert caught.value.status == "CANCELLED"
    assert store.fetch(cancelled.id).status == "CANCELLED"
    assert sup.stats()["counters"]["adopted"] == 1


# -- 7. results from the store ------------------------------------------------------------------


def test_results_are_read_from_the_store_once_the_supervisor_is_gone(start_supervisor, tmp_path):
    spool = tmp_path / "spool"
    sup = start_supervisor("--workers", "1", spool=spool)
    ok = sup.submit(sample_tasks.add, 20, 22)
    bad = sup.submit(sample_tasks.fail, "boom")
    assert ok.result(timeout=10) == 42
    wait_until(lambda: statuses(sup.store, [ok, bad]) == ["SUCCESSFUL", "FAILED"], message="final rows")
    sup.signal(signal.SIGTERM)
    assert sup.wait_exit(15) == 0
    assert not Path(sup.socket).exists()

    assert ok.result(timeout=1) == 42
    assert ok.status == "SUCCESSFUL" and ok.refresh().attempts == 1
    with pytest.raises(taskpool.TaskFailed) as caught:
        bad.result(timeout=1)
    assert caught.value.exception_type == "builtins.ValueError" and caught.value.remote_message == "boom"

    def read_in_child() -> dict:
        handle = taskpool.TaskHandle(ok.id, client=Client(sup.socket), store=open_store("sqlite", str(spool)))
        return {"result": handle.result(timeout=1), "status": handle.status, "pid": os.getpid()}

    report = run_in_child(read_in_child)
    assert "value" in report, report
    assert report["value"]["result"] == 42
    assert report["value"]["status"] == "SUCCESSFUL" and report["value"]["pid"] != os.getpid()


# -- 8. retention ---------------------------------------------------------------------------------


def test_retention_purges_finished_rows_only(start_supervisor, tmp_path):
    gate = tmp_path / "gate"
    sup = start_supervisor("--workers", "1", "--retention-days", "0.00001", imports=IMPORTS)  # 0.864 s
    done = [sup.submit(sample_tasks.add, i, i) for i in range(3)]
    assert [h.result(timeout=10) for h in done] == [0, 2, 4]
    finished = time.monotonic()
    running = sup.submit(durable_tasks.hold, str(gate), str(tmp_path / "hold"), "held")
    waiting = sup.submit(sample_tasks.add, 1, 1)  # READY behind it: one worker
    delayed = sup.submit(sample_tasks.add.using(delay=120), 2, 2)
    live = [running, waiting, delayed]
    wait_until(lambda: statuses(sup.store, live) == ["RUNNING", "READY", "READY"], message="live rows recorded")

    wait_until(lambda: statuses(sup.store, done) == [None] * 3, timeout=10, message="finished rows purged")
    print(f"\n[durability] finished rows purged {time.monotonic() - finished:.2f}s after they finished")
    assert statuses(sup.store, live) == ["RUNNING", "READY", "READY"]
    assert [h.result(timeout=1) for h in done] == [0, 2, 4]  # the supervisor still remembers them

    gate.touch()
    assert running.result(timeout=10) == "held" and waiting.result(timeout=10) == 2
    wait_until(lambda: statuses(sup.store, live) == [None, None, "READY"], timeout=10,
               message="the newly finished rows purged, the delayed one kept")
    assert sup.store.counts() == {"READY": 1}


# -- 9. backpressure -------------------------------------------------------------------------------


def test_max_ready_bounds_the_queue_while_the_store_holds_the_rest(start_supervisor):
    sup = start_supervisor("--workers", "1", "--max-ready", "5", imports=IMPORTS)
    peak, samples = [0], [0]
    stop = threading.Event()
    failures: list[BaseException] = []

    def sample() -> None:
        try:
            while not stop.is_set():
                queue = sup.stats()["queue"]
                peak[0] = max(peak[0], queue["ready"] + queue["delayed"])
                samples[0] += 1
                time.sleep(0.005)
        except BaseException as exc:  # reported to the main thread
            failures.append(exc)

    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.monotonic()
    drain_error = None
    try:
        handles = [sup.submit(sample_tasks.sleep, 0.01, i) for i in range(300)]  # ~3 s of work, submitted faster
        submitted = time.monotonic() - started
        try:  # 1 worker, ~3 s of work: 20 s is generous
            wait_until(lambda: sup.store.counts().get("SUCCESSFUL") == 300, timeout=20, message="300 SUCCESSFUL rows")
        except AssertionError as exc:
            counters = sup.stats()["counters"]
            drain_error = (f"{exc}: store {sup.store.counts()}, accepted directly {counters['submitted']}, "
                           f"adopted from the store {counters['adopted']}")
    finally:
        stop.set()
        sampler.join(10)
    drained = time.monotonic() - started
    print(f"\n[durability] max_ready=5: 300 submitted in {submitted:.2f}s, drain ended after {drained:.2f}s "
          f"({sup.store.counts()}); peak ready+delayed {peak[0]} over {samples[0]} samples")
    assert not failures
    assert samples[0] > 20
    assert peak[0] <= 5
    assert drain_error is None, drain_error
    assert [h.result(timeout=5) for h in handles] == list(range(300))
    assert sup.store.counts() == {"SUCCESSFUL": 300}


# -- 10. store errors at submit ----------------------------------------------------------------------


def test_submit_into_a_locked_database_raises_store_error(start_supervisor):
    sup = start_supervisor("--workers", "1")
    assert sup.submit(sample_tasks.add, 1, 1).result(timeout=10) == 2
    before = total_rows(sup.store)
    locker = sqlite3.connect(str(sup.spool / DB_NAME), isolation_level=None, timeout=10)
    try:
        locker.execute("BEGIN EXCLUSIVE")
        started = time.monotonic()
        with pytest.raises(taskpool.StoreError, match="locked"):
            sup.submit(sample_tasks.add, 2, 2)
        waited = time.monotonic() - started
        assert total_rows(sup.store) == before  # readers still read while it is locked
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    print(f"\n[durability] submit gave up on the locked database after {waited:.2f}s")
    assert waited >= 4
    assert sup.submit(sample_tasks.add, 3, 3).result(timeout=10) == 6
    assert total_rows(sup.store) == before + 1
    assert_supervisor_unaffected(sup)


def test_submit_when_the_disk_is_full_raises_store_error(start_supervisor):
    sup = start_supervisor("--workers", "1")
    first = sup.submit(sample_tasks.add, 1, 1)
    assert first.result(timeout=10) == 2
    wait_until(lambda: statuses(sup.store, [first]) == ["SUCCESSFUL"], message="the row written")
    db = sup.spool / DB_NAME
    wal = db.with_name(DB_NAME + "-wal")
    size = db.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
    assert size < 1_000_000  # so that a 2 MB row cannot fit under the limit
    before = total_rows(sup.store)

    def submit_big() -> str:
        _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        return sup.submit(sample_tasks.echo, "x" * 2_000_000).id

    report = run_in_child(submit_big)
    print(f"\n[durability] disk full in the child: {report}")
    assert report.get("error") == "StoreError", report
    assert str(db) in report["message"]
    # the cause must be the one SQLite gave ("disk I/O error" for EFBIG, "database or disk is full" for ENOSPC)
    cause = report["message"].split(f"{db}:", 1)[-1]  # the tmp path may contain "disk" itself
    assert "disk" in cause and "cannot rollback" not in cause, report["message"]
    assert total_rows(sup.store) == before
    assert_supervisor_unaffected(sup)
    assert total_rows(sup.store) == before + 1


def test_submit_as_a_user_who_cannot_write_the_spool_raises_store_error(start_supervisor):
    if os.geteuid() != 0:
        pytest.skip("switching to another uid needs root")
    sup = start_supervisor("--workers", "1")
    assert sup.submit(sample_tasks.add, 1, 1).result(timeout=10) == 2
    before = total_rows(sup.store)

    def submit_as_nobody() -> str:
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)
        return sup.submit(sample_tasks.add, 2, 2).id

    report = run_in_child(submit_as_nobody)
    print(f"\n[durability] uid 65534: {report}")
    assert report.get("error") == "StoreError", report
    assert DB_NAME in report["message"]
    assert total_rows(sup.store) == before
    assert_supervisor_unaffected(sup)


# -- 11. the memory store -------------------------------------------------------------------------


def test_memory_store_clients_work_and_a_sqlite_client_is_refused(start_supervisor):
    sup = start_supervisor("--workers", "1", "--store", "memory")
    assert sup.stats()["recorder"] is None
    taskpool.configure(spool=str(sup.spool), store="memory")
    try:
        handle = sample_tasks.add.submit(2, 3)
        assert handle.result(timeout=10) == 5
        assert handle.status == "SUCCESSFUL" and not handle.store.durable
    finally:
        taskpool.configure(spool="", store="")
    assert not (sup.spool / DB_NAME).exists()  # nothing persisted

    sqlite_store = open_store("sqlite", str(sup.spool))
    with pytest.raises(taskpool.ConfigError) as caught:
        submit_many([(sample_tasks.add, (1, 1))], client=Client(sup.socket), store=sqlite_store)
    message = str(caught.value)
    assert "memory" in message and "sqlite" in message
    assert sqlite_store.counts() == {}  # refused before anything was written
    assert sup.stats()["counters"]["submitted"] == 1


# -- 12. exactly one final status ----------------------------------------------------------------


def test_each_row_ends_with_exactly_one_final_status_despite_kills(start_supervisor):
    sup = start_supervisor("--workers", "2")
    # the first task runs long enough for its worker to be killed while it is surely still on it
    handles = [sup.submit(sample_tasks.sleep, 1.0 if i == 0 else 0.1, i) for i in range(50)]
    busy = wait_until(lambda: next((w for w in sup.stats()["workers"] if w["task_id"] == handles[0].id), None),
                      message="the first task running")
    os.kill(busy["pid"], signal.SIGKILL)
    wait_until(lambda: pid_gone(busy["pid"]), timeout=5, message="worker gone")
    recorder = wait_until(lambda: new_recorder_pid(sup, []), message="the recorder")
    os.kill(recorder, signal.SIGKILL)
    wait_until(lambda: pid_gone(recorder), timeout=5, message="recorder gone")
    assert sum(sup.store.counts().get(s, 0) for s in FINAL) < 50  # the kills happened mid-run

    wait_until(lambda: sum(sup.store.counts().get(s, 0) for s in FINAL) == 50, timeout=30, message="50 final rows")
    counts = sup.store.counts()
    assert set(counts) <= FINAL and sum(counts.values()) == 50
    assert counts == {"SUCCESSFUL": 50}
    rows = {h.id: sup.store.fetch(h.id) for h in handles}
    assert [rows[h.id].result for h in handles] == list(range(50))
    assert [h.status for h in handles] == [rows[h.id].status for h in handles]  # supervisor and store agree
    lost = rows[busy["task_id"]]
    assert lost.attempts == 2 and [e["type"] for e in lost.errors] == ["taskpool.errors.WorkerLost"]
    assert all(r.attempts == 1 and r.errors == [] for tid, r in rows.items() if tid != busy["task_id"])
    counters = sup.stats()["counters"]
    assert counters["succeeded"] == 50 and counters["failed"] == 0 and counters["cancelled"] == 0
    assert counters["retried"] == 1
    assert sup.stats()["recorder"]["restarts"] == 1


def test_a_stored_submit_by_name_gets_its_registered_options_in_the_row_while_it_waits(start_supervisor, tmp_path):
    """The client does not know the task's options (submitted by name, module not imported
    here): its row says the built-in defaults until the supervisor, which knows them, writes
    the resolved ones; a row adopted after a restart must not run with the wrong options."""
    sup = start_supervisor("--workers", "1", "--prefetch", "0", imports=("sample_tasks", "options_tasks"))
    gate = tmp_path / "gate"
    blocker = sup.submit(sample_tasks.wait_for_file, str(gate))
    wait_until(lambda: blocker.status == "RUNNING", message="the worker busy")
    handle = sup.submit("options_tasks.with_options", 1)
    # The recorder's sweep may claim the row (held_by) a few ms before the supervisor's own
    # write of it, with the resolved options, lands: wait for that write, not the first hold.
    row = wait_until(lambda: (r := sup.store.fetch(handle.id)) is not None and r.held_by is not None
                     and r.max_attempts == 1 and r, message="the row written by the supervisor, options resolved")
    assert (row.status, row.max_attempts, row.priority, row.timeout) == ("READY", 1, 7, 9.0)
    gate.touch()
    assert handle.result(timeout=15) == 1
