"""Workers that die, overrun their timeout, or hit their recycling limits."""

from __future__ import annotations

import os
import signal

import pytest
import sample_tasks
from helpers import pid_gone, wait_until

import taskpool


def test_sigkilled_worker_is_replaced_and_its_task_rerun(start_supervisor, tmp_path):
    sup = start_supervisor("--workers", "1")
    gate = tmp_path / "gate"
    handle = sup.submit(sample_tasks.wait_for_file, str(gate))
    wait_until(lambda: handle.status == "RUNNING")
    victim = sup.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: pid_gone(victim), message="victim gone")
    sup.wait_ready(1)
    assert sup.worker_pids() != [victim]
    gate.touch()
    assert handle.result(timeout=10) == "released"
    info = handle.refresh()
    assert info.attempts == 2
    assert info.errors[0]["type"] == "taskpool.errors.WorkerLost"
    assert "SIGKILL" in info.errors[0]["message"]
    assert sup.stats()["counters"]["retried"] == 1


def test_task_that_kills_its_worker_once_succeeds_on_retry(supervisor, tmp_path):
    handle = supervisor.submit(sample_tasks.crash_once, str(tmp_path / "marker"))
    assert handle.result(timeout=15) == "survived"
    assert handle.refresh().attempts == 2


def test_os_exit_every_time_fails_after_max_attempts_naming_exit_code(supervisor):
    handle = supervisor.submit(sample_tasks.exit_hard, 7)  # max_attempts=2
    with pytest.raises(taskpool.TaskFailed) as caught:
        handle.result(timeout=20)
    assert caught.value.exception_type == "taskpool.errors.WorkerLost"
    assert "exited with code 7" in caught.value.remote_message
    info = handle.refresh()
    assert info.attempts == 2 and len(info.errors) == 2
    supervisor.wait_ready(2)


def test_segfault_is_reported_by_signal_name(supervisor):
    handle = supervisor.submit(sample_tasks.segfault.using(max_attempts=1))
    with pytest.raises(taskpool.TaskFailed) as caught:
        handle.result(timeout=20)
    assert "SIGSEGV" in caught.value.remote_message
    supervisor.wait_ready(2)
    assert supervisor.submit(sample_tasks.add, 1, 1).result(timeout=10) == 2


def test_timeout_kills_worker_and_fails_task(start_supervisor, tmp_path):
    sup = start_supervisor("--workers", "1")
    before = sup.worker_pids()
    handle = sup.submit(sample_tasks.wait_for_file.using(timeout=0.5), str(tmp_path / "never"))
    with pytest.raises(taskpool.TaskFailed) as caught:
        handle.result(timeout=15)
    assert caught.value.exception_type == "taskpool.errors.TaskTimeout"
    assert "0.5" in caught.value.remote_message
    assert handle.refresh().attempts == 1
    assert pid_gone(before[0]) or wait_until(lambda: pid_gone(before[0]))
    sup.wait_ready(1)
    assert sup.worker_pids() != before
    assert sup.stats()["counters"]["timeouts"] == 1


def test_decorator_timeout_applies_when_submitted_by_name(start_supervisor, tmp_path):
    (tmp_path / "slow_default.py").write_text(
        "import time, taskpool\n"
        "@taskpool.task(timeout=0.3)\n"
        "def nap():\n    time.sleep(30)\n"
    )
    sup = start_supervisor("--workers", "1", imports=("slow_default",), env={"PYTHONPATH": str(tmp_path)})
    handle = sup.submit("slow_default.nap")
    with pytest.raises(taskpool.TaskFailed) as caught:
        handle.result(timeout=15)
    assert caught.value.exception_type == "taskpool.errors.TaskTimeout"


def test_max_tasks_per_worker_recycles(start_supervisor):
    sup = start_supervisor("--workers", "1", "--max-tasks-per-worker", "3")
    pids = [sup.submit(sample_tasks.pid).result(timeout=10) for _ in range(7)]
    assert len(set(pids[:3])) == 1
    assert len(set(pids[3:6])) == 1 and pids[3] != pids[0]
    assert pids[6] not in (pids[0], pids[3])


def test_max_memory_per_worker_recycles_after_task(start_supervisor):
    sup = start_supervisor("--workers", "1", "--max-memory-per-worker", "60")
    first = sup.submit(sample_tasks.pid).result(timeout=10)
    assert sup.submit(sample_tasks.allocate, 120).result(timeout=10) == 120 * 1024 * 1024
    wait_until(lambda: pid_gone(first), message="the bloated worker to be retired")
    second = sup.submit(sample_tasks.pid).result(timeout=10)
    assert second != first


def test_worker_count_is_restored_after_kills(start_supervisor):
    sup = start_supervisor("--workers", "3")
    victims = sup.worker_pids()
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    wait_until(lambda: sup.stats()["counters"]["worker_crashes"] == 3, message="three crashes noticed")
    sup.wait_ready(3)
    assert not set(sup.worker_pids()) & set(victims)
    assert sup.submit(sample_tasks.add, 2, 2).result(timeout=10) == 4
