"""Django Tasks-framework tasks for the backend tests, ported from Django's tests/tasks/tasks.py.

Workers find them through ``django_integration.backend.register_tasks`` (which
autodiscovers ``django_tasks`` modules). The signal receivers below append one JSON
line per ``task_enqueued``/``task_started``/``task_finished`` to the file named by
$TASKPOOL_TEST_SIGNAL_LOG (when set), so tests can see signals sent in worker processes.
"""

import json
import os
import sys
import time
from pathlib import Path

from django_integration.compat import TaskContext, task, task_enqueued, task_finished, task_started

SIGNAL_LOG_ENV = "TASKPOOL_TEST_SIGNAL_LOG"


@task()
def noop_task(*args, **kwargs):
    return None


@task
def noop_task_from_bare_decorator(*args, **kwargs):
    return None


@task()
async def noop_task_async(*args, **kwargs):
    return None


@task()
def calculate_meaning_of_life():
    return 42


@task()
async def calculate_meaning_of_life_async():
    return 42


@task()
def failing_task_value_error():
    raise ValueError("This Task failed due to ValueError")


@task()
def failing_task_system_exit():
    raise SystemExit("This Task failed due to SystemExit")


@task()
def failing_task_keyboard_interrupt():
    raise KeyboardInterrupt("This Task failed due to KeyboardInterrupt")


@task()
def complex_exception():
    raise ValueError(ValueError("This task failed"))


@task()
def complex_return_value():
    # Return something which isn't JSON serializable nor picklable.
    return lambda: True


@task()
def exit_task():
    exit(1)


@task()
def sleep_for(seconds):
    time.sleep(seconds)


@task()
def echo(*args, **kwargs):
    return {"args": list(args), "kwargs": kwargs}


@task()
def wait_for_file(path, timeout=30.0):
    """Hold a worker until ``path`` exists (a gate the test opens)."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.01)
    return path


@task(takes_context=True)
def get_task_id(context):
    return context.task_result.id


@task(takes_context=True)
def test_context(context, attempt):
    assert isinstance(context, TaskContext)
    assert context.attempt == attempt


@task(takes_context=True)
def describe_context(context):
    r = context.task_result
    return {"id": r.id, "attempt": context.attempt, "status": str(r.status), "worker_ids": r.worker_ids,
            "enqueued": r.enqueued_at is not None, "started": r.started_at is not None, "pid": os.getpid(),
            "backend": r.backend, "priority": r.task.priority, "queue_name": r.task.queue_name}


def _record(name):
    def receiver(sender, task_result, **kwargs):
        path = os.environ.get(SIGNAL_LOG_ENV)
        if not path:
            return
        line = {
            "signal": name, "sender": sender.__name__, "id": task_result.id, "status": str(task_result.status),
            "path": task_result.task.module_path, "attempts": task_result.attempts,
            "worker_ids": task_result.worker_ids, "pid": os.getpid(), "exc_info": bool(sys.exc_info()[0]),
            "errors": [e.exception_class_path for e in task_result.errors],
        }
        with Path(path).open("a") as fh:
            fh.write(json.dumps(line) + "\n")

    receiver.__name__ = f"record_{name}"
    return receiver


record_enqueued = _record("enqueued")
record_started = _record("started")
record_finished = _record("finished")
task_enqueued.connect(record_enqueued, dispatch_uid="testapp.record_enqueued")
task_started.connect(record_started, dispatch_uid="testapp.record_started")
task_finished.connect(record_finished, dispatch_uid="testapp.record_finished")
