"""Tasks sent ahead to busy workers (``--prefetch``): they stay READY until they start,
a cancel still keeps them from running, a dying worker gives them back without spending
an attempt, and their timeout counts from their own start."""

from __future__ import annotations

import os
import signal

import sample_tasks
from helpers import pid_gone, wait_until


def queued(sup) -> int:
    return sum(w["queued"] for w in sup.stats()["workers"])


def test_a_task_sent_ahead_waits_ready_and_runs_after_the_one_before(start_supervisor, tmp_path):
    sup = start_supervisor("--workers", "1", "--prefetch", "1", "--prefetch-below", "inf")
    gate, log = tmp_path / "gate", tmp_path / "log"
    blocker = sup.submit(sample_tasks.wait_for_file, str(gate))
    ahead = sup.submit(sample_tasks.record, str(log), "ahead")
    behind = sup.submit(sample_tasks.record, str(log), "behind")
    wait_until(lambda: queued(sup) == 1, message="one task sent ahead")
    assert blocker.status == "RUNNING" and ahead.status == "READY" and behind.status == "READY"
    assert ahead.refresh().attempts == 0
    gate.touch()
    assert [h.result(timeout=15) for h in (blocker, ahead, behind)] == ["released", "ahead", "behind"]
    assert log.read_text().split() == ["ahead", "behind"]
    assert ahead.refresh().attempts == 1


def test_cancelling_a_task_sent_ahead_keeps_it_from_running(start_supervisor, tmp_path):
    sup = start_supervisor("--workers", "1", "--prefetch", "1", "--prefetch-below", "inf")
    gate, log = tmp_path / "gate", tmp_path / "log"
    blocker = sup.submit(sample_tasks.wait_for_file, str(gate))
    ahead = sup.submit(sample_tasks.record, str(log), "cancelled")
    wait_until(lambda: queued(sup) == 1, message="one task sent ahead")
    worker = sup.worker_pids()[0]
    assert ahead.cancel() == "CANCELLED"
    gate.touch()
    assert blocker.result(timeout=15) == "released"
    after = sup.submit(sample_tasks.record, str(log), "after")
    assert after.result(timeout=15) == "after"
    assert log.read_text().split() == ["after"]  # the cancelled one never ran
    assert ahead.status == "CANCELLED"
    assert sup.worker_pids() == [worker]  # skipped by the worker, which was not stopped for it


def test_a_dead_worker_gives_back_its_tasks_sent_ahead_without_spending_an_attempt(start_supervisor, tmp_path):
    sup = start_supervisor("--workers", "1", "--prefetch", "2", "--prefetch-below", "inf")
    gate, log = tmp_path / "gate", tmp_path / "log"
    blocker = sup.submit(sample_tasks.wait_for_file, str(gate))
    ahead = [sup.submit(sample_tasks.record, str(log), f"a{i}") for i in range(2)]
    wait_until(lambda: queued(sup) == 2, message="two tasks sent ahead")
    victim = sup.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: pid_gone(victim), message="worker gone")
    gate.touch()
    assert blocker.result(timeout=15) == "released"
    assert [h.result(timeout=15) for h in ahead] == ["a0", "a1"]
    assert blocker.refresh().attempts == 2  # it was running: re-run, attempt counted
    assert [h.refresh().attempts for h in ahead] == [1, 1]  # never started before: nothing spent
    assert sorted(log.read_text().split()) == ["a0", "a1"]


def test_the_timeout_of_a_task_sent_ahead_counts_from_its_own_start(start_supervisor):
    sup = start_supervisor("--workers", "1", "--prefetch", "1", "--prefetch-below", "inf")
    first = sup.submit(sample_tasks.sleep.using(timeout=5), 1.0, "first")
    second = sup.submit(sample_tasks.sleep.using(timeout=0.8), 0.3, "second")
    wait_until(lambda: queued(sup) == 1, message="the second sent ahead")
    assert first.result(timeout=15) == "first"
    assert second.result(timeout=15) == "second"  # 1.3 s after it was sent, 0.3 s after it started


def test_prefetch_zero_sends_nothing_ahead(start_supervisor, tmp_path):
    sup = start_supervisor("--workers", "1", "--prefetch", "0")
    gate = tmp_path / "gate"
    blocker = sup.submit(sample_tasks.wait_for_file, str(gate))
    waiting = sup.submit(sample_tasks.add, 1, 2)
    wait_until(lambda: blocker.status == "RUNNING", message="the blocker running")
    assert sup.stats()["queue"]["ready"] == 1 and queued(sup) == 0
    gate.touch()
    assert waiting.result(timeout=15) == 3


def test_quick_tasks_are_sent_ahead_by_default_and_a_long_one_sent_ahead_does_not_hold_back_a_done(
        start_supervisor, tmp_path):
    """The Done of a quick task reaches the supervisor at once, even when the quick-named
    task sent ahead after it turns out long (a worker never holds a Done back)."""
    from taskpool.client import submit_many

    sup = start_supervisor("--workers", "1")  # the default --prefetch and --prefetch-below
    here, gate = tmp_path / "here", tmp_path / "gate"
    here.touch()
    warm = submit_many([(sample_tasks.wait_for_file, (str(here),), {}) for _ in range(30)],
                       client=sup.client, store=sup.store)
    assert [h.result(timeout=15) for h in warm] == ["released"] * 30  # the name is now known to be quick
    quick, slow, after = submit_many(
        [(sample_tasks.wait_for_file, (str(here),), {}), (sample_tasks.wait_for_file, (str(gate),), {}),
         (sample_tasks.wait_for_file, (str(here),), {})], client=sup.client, store=sup.store)
    wait_until(lambda: slow.status == "RUNNING" or queued(sup) > 0, message="the batch dispatched")
    assert quick.result(timeout=5) == "released"  # not held behind the blocked task
    assert slow.status == "RUNNING" and after.status == "READY"
    gate.touch()
    assert slow.result(timeout=15) == "released" and after.result(timeout=15) == "released"


def test_a_quick_task_that_kills_its_worker_is_charged_and_the_tasks_before_it_run_once(start_supervisor, tmp_path):
    """Tasks sent ahead and finished before a task that kills the worker are not run again,
    and the crash is charged to the task that crashed (found in review: a Done held back to
    be written with the next one was lost with the worker)."""
    from collections import Counter

    from taskpool.client import submit_many

    sup = start_supervisor("--workers", "1")
    log, marker = tmp_path / "log", tmp_path / "marker"
    warm = submit_many([(sample_tasks.record, (str(log), f"w{i}"), {}) for i in range(30)], client=sup.client, store=sup.store)
    assert [h.result(timeout=15) for h in warm] == [f"w{i}" for i in range(30)]  # the name is quick now
    calls = [(sample_tasks.record, (str(log), f"a{i}"), {}) for i in range(6)]
    calls.append((sample_tasks.record, (str(log), "crash", str(marker)), {}))
    calls += [(sample_tasks.record, (str(log), f"c{i}"), {}) for i in range(6)]
    handles = submit_many(calls, client=sup.client, store=sup.store)
    results = [h.result(timeout=20) for h in handles]
    assert results == [c[1][1] for c in calls]
    runs = Counter(log.read_text().split())
    assert [label for label, n in runs.items() if n > 1] == ["crash"]  # only the crashed one ran again
    crashed = handles[6].refresh()
    assert crashed.attempts == 2 and "WorkerLost" in crashed.errors[0]["type"]
    assert all(h.refresh().attempts == 1 for h in handles[:6] + handles[7:])
