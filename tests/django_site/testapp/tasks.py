"""taskpool tasks for the Django tests (autodiscovered by Django-mode workers)."""

import time

import taskpool


@taskpool.task
def add(a, b):
    return a + b


@taskpool.task
def count_records():
    """Touches the ORM from a worker: the task table has rows."""
    from django_integration.models import TaskRecord

    return TaskRecord.objects.count()


@taskpool.task
def report(steps, delay=0.05):
    for i in range(steps):
        taskpool.progress(100 * i / steps, f"step {i + 1} of {steps}")
        time.sleep(delay)
    return {"steps": steps}


@taskpool.task
def wait_for_file(path, timeout=30):
    import os

    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(path)
        time.sleep(0.01)
    return "released"
