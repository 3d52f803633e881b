"""Submitting, results, status, progress and failures through a real supervisor."""

from __future__ import annotations

import pytest
import sample_tasks
from helpers import wait_until

import taskpool
from taskpool.protocol import FINAL_STATUSES


def test_submit_by_name_task_and_method(supervisor):
    assert supervisor.submit("sample_tasks.add", 2, 3).result(timeout=10) == 5
    assert supervisor.submit(sample_tasks.add, 4, 5).result(timeout=10) == 9
    assert supervisor.submit(sample_tasks.named).result(timeout=10) == "named"


def test_module_level_api_uses_configured_socket(supervisor):
    taskpool.configure(spool=str(supervisor.spool))
    try:
        handle = sample_tasks.add.submit(20, 22)
        assert isinstance(handle.id, str) and len(handle.id) == 32
        assert handle.result(timeout=10) == 42
        assert handle.status == "SUCCESSFUL"
        assert taskpool.get(handle.id).result(timeout=1) == 42
        assert taskpool.stats()["pid"] == supervisor.pid
    finally:
        taskpool.configure(spool="")


def test_kwargs_and_json_values_round_trip(supervisor):
    value = {"a": [1, 2.5, None, True, "é"], "nested": {"x": [[]]}, "big": 2**62}
    assert supervisor.submit(sample_tasks.echo, value=value).result(timeout=10) == value


def test_status_goes_ready_running_successful(start_supervisor, tmp_path):
    sup = start_supervisor("--workers", "1")
    gate = tmp_path / "gate"
    blocker = sup.submit(sample_tasks.wait_for_file, str(gate))
    queued = sup.submit(sample_tasks.add, 1, 1)
    wait_until(lambda: blocker.status == "RUNNING", message="blocker running")
    assert queued.status == "READY"
    gate.touch()
    assert queued.result(timeout=10) == 2
    assert blocker.status == "SUCCESSFUL"


def test_failure_carries_remote_type_message_and_traceback(supervisor):
    handle = supervisor.submit(sample_tasks.fail, "bad thing")
    with pytest.raises(taskpool.TaskFailed) as caught:
        handle.result(timeout=10)
    err = caught.value
    assert err.exception_type == "builtins.ValueError"
    assert err.remote_message == "bad thing"
    assert "raise ValueError(message)" in err.remote_traceback
    assert handle.status == "FAILED"
    assert handle.errors[-1]["type"] == "builtins.ValueError"


def test_progress_is_visible_while_running(supervisor):
    handle = supervisor.submit(sample_tasks.steps, 20, 0.05)
    seen = wait_until(lambda: handle.progress and handle.progress > 0 and handle.progress_message, message="progress")
    assert seen
    assert handle.progress_message.startswith("step ")
    assert handle.result(timeout=20) == 20
    assert handle.progress == 100.0


def test_progress_shows_in_stats(supervisor):
    handle = supervisor.submit(sample_tasks.steps, 40, 0.05)
    row = wait_until(
        lambda: [w for w in supervisor.stats()["workers"] if w["task_id"] == handle.id and w["progress"]],
        message="progress in stats",
    )
    assert row[0]["task_name"] == "sample_tasks.steps"
    handle.cancel()


def test_priority_order_then_fifo(start_supervisor, tmp_path):
    sup = start_supervisor("--workers", "1")
    gate, log = tmp_path / "gate", tmp_path / "order.log"
    blocker = sup.submit(sample_tasks.wait_for_file, str(gate))
    wait_until(lambda: blocker.status == "RUNNING")
    handles = [
        sup.submit(sample_tasks.record.using(priority=0), str(log), "low-1"),
        sup.submit(sample_tasks.record.using(priority=10), str(log), "high-1"),
        sup.submit(sample_tasks.record.using(priority=0), str(log), "low-2"),
        sup.submit(sample_tasks.record.using(priority=10), str(log), "high-2"),
        sup.submit(sample_tasks.record.using(priority=-5), str(log), "lowest"),
    ]
    gate.touch()
    for h in handles:
        h.result(timeout=10)
    assert log.read_text().split() == ["high-1", "high-2", "low-1", "low-2", "lowest"]


def test_delay_holds_task_until_due(supervisor):
    handle = supervisor.submit(sample_tasks.add.using(delay=1.0), 1, 2)
    assert handle.status == "READY"
    assert supervisor.stats()["queue"]["delayed"] == 1
    assert handle.result(timeout=10) == 3
    assert supervisor.stats()["queue"]["delayed"] == 0


def test_cancel_ready_and_running(start_supervisor, tmp_path):
    sup = start_supervisor("--workers", "1")
    running = sup.submit(sample_tasks.wait_for_file, str(tmp_path / "never"))
    wait_until(lambda: running.status == "RUNNING")
    waiting = sup.submit(sample_tasks.add, 1, 1)
    old_pid = sup.worker_pids()[0]
    assert waiting.cancel() == "CANCELLED"
    assert running.cancel() == "CANCELLED"
    with pytest.raises(taskpool.TaskFailed):
        waiting.result(timeout=1)
    assert running.errors[-1]["type"] == "taskpool.errors.Cancelled"
    sup.wait_ready(1)
    assert sup.worker_pids() != [old_pid]
    assert sup.submit(sample_tasks.add, 2, 2).result(timeout=10) == 4


def test_result_timeout_raises_and_task_keeps_running(supervisor, tmp_path):
    gate = tmp_path / "gate"
    handle = supervisor.submit(sample_tasks.wait_for_file, str(gate))
    with pytest.raises(taskpool.ResultTimeout):
        handle.result(timeout=0.3)
    gate.touch()
    assert handle.result(timeout=10) == "released"


def test_async_task_runs_in_worker(supervisor):
    assert supervisor.submit(sample_tasks.coroutine, 21).result(timeout=10) == 42


def test_stats_has_documented_keys(supervisor):
    data = supervisor.stats()
    for key in ("pid", "uptime", "generation", "workers", "queue", "counters"):
        assert key in data
    assert set(data["queue"]) >= {"ready", "delayed", "running"}
    worker = data["workers"][0]
    for key in ("pid", "state", "task_id", "tasks_done", "rss", "cpu_percent"):
        assert key in worker
    assert worker["rss"] > 1024 * 1024
    assert set(data["counters"]) >= {"submitted", "succeeded", "failed", "retried", "worker_restarts"}


def test_many_tasks_all_reach_a_final_status(supervisor):
    handles = [supervisor.submit(sample_tasks.add, i, i) for i in range(300)]
    assert [h.result(timeout=30) for h in handles] == [2 * i for i in range(300)]
    assert all(h.status in FINAL_STATUSES for h in handles[:5])
