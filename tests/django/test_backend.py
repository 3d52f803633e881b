"""The Django Tasks-framework backend (``TaskpoolBackend``) against a real Django-mode pool.

Ports the assertions of Django's ImmediateBackend tests (tests/tasks/test_immediate_backend.py):
each enqueues on the real supervisor, waits for the result with a deadline (``refresh()``),
then asserts. Signals sent in workers are seen through the test app's receivers (a JSON
line per signal, see testapp/django_tasks.py) and the ``django.tasks`` log lines in the
supervisor's output.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import socket

import pytest
from asgiref.sync import async_to_sync
from django.db import transaction
from django.utils import timezone
from django_site.testapp import django_tasks as tasks
from helpers import wait_until

import taskpool
from django_integration.backend import TaskpoolBackend, register_tasks
from django_integration.compat import (
    LOGGER_NAME,
    InvalidTask,
    TaskResultDoesNotExist,
    TaskResultMismatch,
    TaskResultStatus,
    task_backends,
)
from django_integration.models import TaskRecord
from taskpool.registry import default_registry

DEADLINE = 20.0
ID = re.compile(r"^[0-9a-f]{32}$")


@pytest.fixture
def signal_log(tmp_path, monkeypatch):
    """Where the test app's receivers write one line per signal (in every process)."""
    path = tmp_path / "signals.jsonl"
    monkeypatch.setenv(tasks.SIGNAL_LOG_ENV, str(path))

    def read(task_id: str | None = None) -> list[dict]:
        lines = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
        return [e for e in lines if task_id is None or e["id"] == task_id]

    return read


@pytest.fixture
def pool(signal_log, django_supervisor):
    """The Django-mode supervisor (2 workers), started after $TASKPOOL_TEST_SIGNAL_LOG is set
    (fixtures are set up in argument order)."""
    return django_supervisor


@pytest.fixture
def immediate(transactional_db, taskpool_settings, signal_log):
    taskpool.configure(immediate=True)
    yield
    taskpool.configure(immediate=False)


def finish(result, timeout: float = DEADLINE):
    """Poll ``result.refresh()`` until the task is finished; returns the result."""

    def done() -> bool:
        result.refresh()
        return result.is_finished

    wait_until(done, timeout, f"task {result.id} ({result.task.name}) to finish")
    return result


def log_lines(pool, task_id: str) -> list[str]:
    """The django.tasks records about ``task_id`` written by the supervisor's processes."""
    marker = f"{LOGGER_NAME}: Task id={task_id} "
    return [line for line in pool.log().splitlines() if marker in line]


def assert_finished_timestamps(result) -> None:
    assert result.started_at is not None
    assert result.last_attempted_at is not None
    assert result.finished_at is not None
    assert result.started_at >= result.enqueued_at
    assert result.last_attempted_at >= result.started_at
    assert result.finished_at >= result.started_at


# -- configuration ---------------------------------------------------------------------------


def test_backend_is_configured_with_honest_flags():
    backend = task_backends["default"]
    assert isinstance(backend, TaskpoolBackend)
    assert backend.alias == "default" and backend.options == {} and backend.queues == set()
    assert backend.supports_defer and backend.supports_priority
    assert backend.supports_get_result and backend.supports_async_task
    assert backend.check() == []


def test_construction_touches_neither_socket_nor_database(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("TaskpoolBackend() connected a socket")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    backend = TaskpoolBackend("other", {"QUEUES": ["a"], "OPTIONS": {"x": 1}})  # no DB access allowed here either
    assert backend.alias == "other" and backend.queues == {"a"} and backend.options == {"x": 1}


def test_check_reports_a_missing_app_and_the_memory_store(settings):
    settings.TASKPOOL = {"SPOOL": "/tmp/unused", "STORE": "memory"}
    assert [e.id for e in TaskpoolBackend("default", {}).check()] == ["taskpool.E011"]
    settings.INSTALLED_APPS = [a for a in settings.INSTALLED_APPS if a != "django_integration"]
    errors = TaskpoolBackend("default", {}).check()
    assert [e.id for e in errors][:1] == ["taskpool.E010"]
    assert "django_integration" in errors[0].msg


def test_register_tasks_registers_the_django_tasks_of_installed_apps():
    names = register_tasks()
    assert "django_site.testapp.django_tasks.noop_task" in names
    assert "django_site.testapp.django_tasks.test_context" in names
    assert "django_site.testapp.tasks.add" not in names  # a taskpool task, registered by taskpool itself
    entry = default_registry.get("django_site.testapp.django_tasks.calculate_meaning_of_life")
    assert entry is not None and entry.func.django_task is tasks.calculate_meaning_of_life
    assert entry.func() == 42  # outside a worker it still runs the task


# -- validation at enqueue: nothing is written --------------------------------------------------


@pytest.mark.django_db
def test_validation_at_enqueue_writes_nothing(taskpool_settings, settings):
    with pytest.raises(TypeError, match="Unsupported type"):
        tasks.noop_task.enqueue(dt.datetime.now())
    with pytest.raises(TypeError, match="Unsupported type"):
        tasks.noop_task.enqueue(value={1, 2})
    with pytest.raises(TypeError):  # normalize_json keeps int keys; JSON (and taskpool) cannot
        tasks.noop_task.enqueue({1: 2})
    with pytest.raises(TypeError):
        tasks.noop_task.enqueue(2**70)
    with pytest.raises(InvalidTask, match="run_after must be an aware datetime"):
        tasks.noop_task.using(run_after=dt.datetime.now())
    settings.TASKS = {"default": {"BACKEND": "django_integration.backend.TaskpoolBackend", "QUEUES": ["queue-1"]}}
    with pytest.raises(InvalidTask, match="Queue 'unknown_queue' is not valid for backend"):
        tasks.noop_task.using(queue_name="unknown_queue")
    settings.TASKS = {"default": {"BACKEND": "django_integration.backend.TaskpoolBackend", "QUEUES": []}}
    unknown = tasks.noop_task.using(queue_name="unknown_queue")
    settings.TASKS = {"default": {"BACKEND": "django_integration.backend.TaskpoolBackend", "QUEUES": ["queue-1"]}}
    with pytest.raises(InvalidTask, match="Queue 'unknown_queue' is not valid for backend"):
        unknown.enqueue()  # validated again at enqueue
    with pytest.raises(InvalidTask, match="Queue 'unknown_queue' is not valid for backend"):
        async_to_sync(unknown.aenqueue)()
    assert TaskRecord.objects.count() == 0


@pytest.mark.django_db
def test_unknown_result_id_does_not_exist(taskpool_settings):
    backend = task_backends["default"]
    for bogus in ("0" * 32, "not-an-id", 123, "x" * 200):
        with pytest.raises(TaskResultDoesNotExist):
            backend.get_result(bogus)
    with pytest.raises(TaskResultDoesNotExist):
        async_to_sync(backend.aget_result)("0" * 32)


# -- execution in the pool ----------------------------------------------------------------------


def test_enqueue_returns_a_ready_result_with_the_taskpool_id(pool, signal_log):
    with transaction.atomic():  # hold the notification: the result is READY for sure
        result = tasks.noop_task.enqueue(1, two=3)
    assert ID.match(result.id)
    assert result.status == TaskResultStatus.READY and not result.is_finished
    assert result.enqueued_at is not None and result.enqueued_at <= timezone.now()
    assert result.started_at is result.finished_at is result.last_attempted_at is None
    assert result.errors == [] and result.worker_ids == [] and result.attempts == 0
    assert result.backend == "default" and result.task == tasks.noop_task
    assert result.args == [1] and result.kwargs == {"two": 3}
    with pytest.raises(ValueError, match="Task has not finished yet"):
        _ = result.return_value
    record = TaskRecord.objects.get(pk=result.id)
    assert record.name == "django_site.testapp.django_tasks.noop_task"
    assert (record.args, record.kwargs, record.priority, record.queue) == ([1], {"two": 3}, 0, "default")
    assert finish(result).status == TaskResultStatus.SUCCESSFUL


@pytest.mark.parametrize("task", [tasks.noop_task, tasks.noop_task_async, tasks.noop_task_from_bare_decorator])
def test_enqueue_task(pool, task):
    result = finish(task.enqueue(1, two=3))
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.is_finished is True
    assert_finished_timestamps(result)
    assert result.return_value is None
    assert result.task == task
    assert result.args == [1]
    assert result.kwargs == {"two": 3}
    assert result.attempts == 1
    assert result.errors == []
    assert int(result.worker_ids[0]) in pool.worker_pids()


def test_enqueue_task_async(pool):
    for task in (tasks.noop_task, tasks.noop_task_async):
        result = async_to_sync(task.aenqueue)()
        assert ID.match(result.id) and result.status in (TaskResultStatus.READY, TaskResultStatus.RUNNING,
                                                          TaskResultStatus.SUCCESSFUL)

        def done(result=result) -> bool:
            async_to_sync(result.arefresh)()
            return result.is_finished

        wait_until(done, DEADLINE, "async-enqueued task")
        assert result.status == TaskResultStatus.SUCCESSFUL
        assert_finished_timestamps(result)
        assert result.args == [] and result.kwargs == {} and result.attempts == 1


def test_args_and_kwargs_are_normalized(pool):
    result = finish(tasks.echo.enqueue((1, (2, 3)), b"bytes", key={"nested": (4,)}))
    assert result.args == [[1, [2, 3]], "bytes"]
    assert result.kwargs == {"key": {"nested": [4]}}
    assert result.return_value == {"args": [[1, [2, 3]], "bytes"], "kwargs": {"key": {"nested": [4]}}}


@pytest.mark.parametrize(
    ("task", "exception", "message"),
    [
        (tasks.failing_task_value_error, ValueError, "This Task failed due to ValueError"),
        (tasks.failing_task_system_exit, SystemExit, "This Task failed due to SystemExit"),
    ],
)
def test_catches_exception(pool, signal_log, task, exception, message):
    result = finish(task.enqueue())
    assert result.status == TaskResultStatus.FAILED
    with pytest.raises(ValueError, match="Task failed"):
        _ = result.return_value
    assert result.is_finished is True
    assert_finished_timestamps(result)
    assert len(result.errors) == 1
    assert result.errors[0].exception_class is exception
    traceback = result.errors[0].traceback
    assert traceback and traceback.endswith(f"{exception.__name__}: {message}\n"), traceback
    assert result.task == task
    assert result.args == [] and result.kwargs == {}
    assert result.attempts == 1  # not retried
    # task_finished was sent inside the except block: exc_info available, so the ERROR line has the traceback
    finished = wait_until(lambda: [e for e in signal_log(result.id) if e["signal"] == "finished"], DEADLINE)
    assert finished[0]["status"] == "FAILED" and finished[0]["exc_info"] is True
    assert finished[0]["errors"] == [f"builtins.{exception.__name__}"]
    errors = wait_until(lambda: [line for line in log_lines(pool, result.id) if "state=FAILED" in line], DEADLINE)
    assert len(errors) == 1 and " ERROR " in errors[0]
    assert f"{exception.__name__}: {message}" in pool.log()


def test_system_exit_and_keyboard_interrupt_fail_the_task_not_the_worker(pool):
    pids = sorted(pool.worker_pids())
    for task, exception in ((tasks.exit_task, SystemExit), (tasks.failing_task_keyboard_interrupt, KeyboardInterrupt)):
        result = finish(task.enqueue())
        assert result.status == TaskResultStatus.FAILED
        assert result.attempts == 1 and len(result.errors) == 1
        assert result.errors[0].exception_class is exception
    assert sorted(pool.worker_pids()) == pids  # the same two workers, still serving
    assert finish(tasks.calculate_meaning_of_life.enqueue()).return_value == 42


def test_complex_exception(pool):
    result = finish(tasks.complex_exception.enqueue())
    assert result.status == TaskResultStatus.FAILED
    with pytest.raises(ValueError, match="Task failed"):
        _ = result.return_value
    assert_finished_timestamps(result)
    assert result._return_value is None
    assert result.errors[0].exception_class is ValueError
    assert 'ValueError(ValueError("This task failed"))' in result.errors[0].traceback
    assert result.task == tasks.complex_exception
    assert result.args == [] and result.kwargs == {}


def test_complex_return_value(pool):
    result = finish(tasks.complex_return_value.enqueue())
    assert result.status == TaskResultStatus.FAILED
    assert_finished_timestamps(result)
    assert result._return_value is None
    assert result.errors[0].exception_class is TypeError
    assert "Unsupported type" in result.errors[0].traceback


def test_result(pool):
    result = finish(task_backends["default"].enqueue(tasks.calculate_meaning_of_life, [], {}))
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == 42


def test_result_async(pool):
    backend = task_backends["default"]
    for task in (tasks.calculate_meaning_of_life, tasks.calculate_meaning_of_life_async):
        result = async_to_sync(backend.aenqueue)(task, (), {})
        finish(result)
        assert result.status == TaskResultStatus.SUCCESSFUL
        assert result.return_value == 42


def test_takes_context(pool):
    result = finish(tasks.get_task_id.enqueue())
    assert result.return_value == result.id


def test_context(pool):
    result = finish(tasks.test_context.enqueue(1))
    assert result.status == TaskResultStatus.SUCCESSFUL, result.errors
    wrong = finish(tasks.test_context.enqueue(2))
    assert wrong.status == TaskResultStatus.FAILED
    assert wrong.errors[0].exception_class is AssertionError


def test_context_describes_the_running_attempt(pool):
    result = finish(tasks.describe_context.using(priority=7).enqueue())
    seen = result.return_value
    assert seen["id"] == result.id and seen["attempt"] == 1 and seen["status"] == "RUNNING"
    assert seen["worker_ids"] == [str(seen["pid"])] == result.worker_ids
    assert seen["enqueued"] and seen["started"]
    assert (seen["backend"], seen["priority"], seen["queue_name"]) == ("default", 7, "default")


# -- results ----------------------------------------------------------------------------------


def test_get_result_from_a_fresh_lookup_equals_the_refreshed_result(pool):
    result = finish(tasks.calculate_meaning_of_life.using(priority=5, queue_name="reports").enqueue())
    fresh = task_backends["default"].get_result(result.id)
    assert fresh == result  # every field: task, id, status, times, args, backend, errors, worker_ids, value
    assert fresh.task.priority == 5 and fresh.task.queue_name == "reports"
    assert fresh.task.func is tasks.calculate_meaning_of_life.func
    assert tasks.calculate_meaning_of_life.get_result(result.id) == result
    assert async_to_sync(tasks.calculate_meaning_of_life.aget_result)(result.id) == result
    with pytest.raises(TaskResultMismatch):
        tasks.noop_task.get_result(result.id)
    failed = finish(tasks.failing_task_value_error.enqueue())
    assert task_backends["default"].get_result(failed.id) == failed


def test_a_taskpool_task_is_not_a_django_result(pool):
    from django_site.testapp import tasks as pool_tasks

    handle = taskpool.submit(pool_tasks.add, 1, 2)
    assert handle.result(timeout=DEADLINE) == 3
    with pytest.raises(TaskResultDoesNotExist):
        task_backends["default"].get_result(handle.id)


def test_cancelled_is_reported_as_failed(pool):
    result = tasks.noop_task.using(run_after=timezone.now() + dt.timedelta(seconds=60)).enqueue()
    assert taskpool.cancel(result.id) == "CANCELLED"
    wait_until(lambda: TaskRecord.objects.get(pk=result.id).status == "CANCELLED", DEADLINE, "cancelled row")
    result.refresh()
    assert result.status == TaskResultStatus.FAILED and result.is_finished
    assert result.errors[-1].exception_class_path == "taskpool.errors.Cancelled"


# -- ordering ---------------------------------------------------------------------------------


def test_priority_order_is_honoured(pool, tmp_path):
    gates = [tmp_path / "gate1", tmp_path / "gate2"]
    blockers = [tasks.wait_for_file.enqueue(str(g)) for g in gates]
    for b in blockers:  # both workers busy
        wait_until(lambda b=b: b.refresh() or b.status == TaskResultStatus.RUNNING, DEADLINE, "blockers running")
    queued = [tasks.noop_task.using(priority=p).enqueue(p) for p in (-10, 0, 50, 10, 100)]
    gates[0].touch()  # one worker frees up and takes the queue in priority order, one task at a time
    for r in queued:
        finish(r)
    gates[1].touch()
    for b in blockers:
        finish(b)
    by_start = sorted(queued, key=lambda r: r.started_at)
    assert [r.args[0] for r in by_start] == [100, 50, 10, 0, -10]
    assert all(a.finished_at <= b.started_at for a, b in zip(by_start, by_start[1:], strict=False))
    assert len({r.worker_ids[0] for r in queued}) == 1


def test_run_after_is_honoured(pool):
    start = timezone.now()
    later = start + dt.timedelta(seconds=3)
    deferred = tasks.noop_task.using(run_after=later).enqueue()
    assert deferred.task.run_after == later
    now = finish(tasks.noop_task.enqueue())
    deferred.refresh()
    assert deferred.status == TaskResultStatus.READY  # the undelayed task finished first
    finish(deferred)
    assert deferred.status == TaskResultStatus.SUCCESSFUL
    assert deferred.started_at >= later > now.finished_at
    assert task_backends["default"].get_result(deferred.id).task.run_after == later


# -- signals and logs ---------------------------------------------------------------------------


def test_signals_and_log_lines(pool, signal_log, caplog):
    caplog.set_level(logging.DEBUG, logger=LOGGER_NAME)
    result = finish(tasks.calculate_meaning_of_life.enqueue())
    here = [r for r in caplog.records if r.name == LOGGER_NAME]
    assert len(here) == 1 and "enqueued" in here[0].getMessage() and result.id in here[0].getMessage()
    assert "backend=default" in here[0].getMessage()
    events = wait_until(lambda: (e := signal_log(result.id)) and len(e) == 3 and e, DEADLINE, "three signals")
    enqueued, started, finished = events
    assert [e["signal"] for e in events] == ["enqueued", "started", "finished"]
    assert {e["sender"] for e in events} == {"TaskpoolBackend"}
    assert enqueued["status"] == "READY" and enqueued["pid"] != started["pid"]
    assert started["status"] == "RUNNING" and started["attempts"] == 1
    assert started["worker_ids"] == [str(started["pid"])] and started["pid"] in pool.worker_pids()
    assert finished["status"] == "SUCCESSFUL" and finished["exc_info"] is False and finished["pid"] == started["pid"]
    lines = wait_until(lambda: len(log_lines(pool, result.id)) == 2 and log_lines(pool, result.id), DEADLINE)
    assert "state=RUNNING" in lines[0] and " INFO " in lines[0]
    assert "state=SUCCESSFUL" in lines[1] and " INFO " in lines[1]
    assert not any("NoneType" in line for line in lines)


# -- transactions -------------------------------------------------------------------------------


def test_enqueue_in_a_rolled_back_transaction_leaves_no_row_and_runs_nothing(pool, signal_log):
    with pytest.raises(RuntimeError), transaction.atomic():
        result = tasks.calculate_meaning_of_life.enqueue()
        assert TaskRecord.objects.filter(pk=result.id).exists()  # in the transaction
        raise RuntimeError("the view failed")
    assert not TaskRecord.objects.filter(pk=result.id).exists()
    with pytest.raises(TaskResultDoesNotExist):
        result.refresh()
    later = finish(tasks.calculate_meaning_of_life.enqueue())
    assert later.return_value == 42
    counters = pool.stats()["counters"]
    assert counters["submitted"] + counters["adopted"] == 1  # a sweep may adopt the row before its Submit
    assert [e["signal"] for e in signal_log(result.id)] == ["enqueued"]  # sent at enqueue; never started


def test_committed_transaction_notifies_the_supervisor_on_commit(pool):
    with transaction.atomic():
        result = tasks.calculate_meaning_of_life.enqueue()
        assert pool.stats()["counters"]["submitted"] == 0
    assert finish(result).return_value == 42


# -- immediate mode -------------------------------------------------------------------------


def test_immediate_mode_returns_the_finished_result(immediate, signal_log, caplog):
    caplog.set_level(logging.DEBUG, logger=LOGGER_NAME)
    for task in (tasks.noop_task, tasks.noop_task_async):
        result = task.enqueue(1, two=3)
        assert ID.match(result.id)
        assert result.status == TaskResultStatus.SUCCESSFUL and result.is_finished
        assert_finished_timestamps(result)
        assert result.return_value is None and result.task == task
        assert result.args == [1] and result.kwargs == {"two": 3} and result.attempts == 1
        assert task_backends["default"].get_result(result.id) == result
        record = TaskRecord.objects.get(pk=result.id)
        assert record.status == "SUCCESSFUL" and record.attempts == 1
        messages = [r.getMessage() for r in caplog.records if r.name == LOGGER_NAME and result.id in r.getMessage()]
        assert len(messages) == 3
        assert "enqueued" in messages[0] and "state=RUNNING" in messages[1] and "state=SUCCESSFUL" in messages[2]
        assert [e["signal"] for e in signal_log(result.id)] == ["enqueued", "started", "finished"]
    result = tasks.get_task_id.enqueue()
    assert result.return_value == result.id
    assert tasks.test_context.enqueue(1).status == TaskResultStatus.SUCCESSFUL
    assert tasks.calculate_meaning_of_life.enqueue().return_value == 42


@pytest.mark.parametrize(
    ("task", "exception", "message"),
    [
        (tasks.failing_task_value_error, ValueError, "This Task failed due to ValueError"),
        (tasks.failing_task_system_exit, SystemExit, "This Task failed due to SystemExit"),
        (tasks.failing_task_keyboard_interrupt, KeyboardInterrupt, "This Task failed due to KeyboardInterrupt"),
    ],
)
def test_immediate_mode_records_failures(immediate, caplog, task, exception, message):
    with caplog.at_level(logging.ERROR, logger=LOGGER_NAME):
        result = task.enqueue()
    errors = [r for r in caplog.records if r.name == LOGGER_NAME and r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "state=FAILED" in errors[0].getMessage() and errors[0].exc_info is not None
    assert result.status == TaskResultStatus.FAILED
    assert_finished_timestamps(result)
    assert result.errors[0].exception_class is exception
    assert result.errors[0].traceback.endswith(f"{exception.__name__}: {message}\n")
    assert task_backends["default"].get_result(result.id) == result
    assert TaskRecord.objects.get(pk=result.id).errors[0]["type"] == f"builtins.{exception.__name__}"


def test_immediate_mode_complex_return_value(immediate):
    result = tasks.complex_return_value.enqueue()
    assert result.status == TaskResultStatus.FAILED
    assert result.errors[0].exception_class is TypeError
    assert "Unsupported type" in result.errors[0].traceback


def test_immediate_mode_in_a_transaction_runs_on_commit(immediate):
    with transaction.atomic():
        result = tasks.calculate_meaning_of_life.enqueue()
        assert result.status == TaskResultStatus.READY and result.enqueued_at is not None
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL and result.return_value == 42
    with pytest.raises(RuntimeError), transaction.atomic():
        dropped = tasks.calculate_meaning_of_life.enqueue()
        raise RuntimeError("rolled back")
    with pytest.raises(TaskResultDoesNotExist):
        dropped.refresh()
