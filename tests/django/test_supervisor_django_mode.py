"""A Django-mode supervisor: workers call django.setup(), the recorder writes through the ORM."""

from __future__ import annotations

import pytest
from django.db import transaction
from django_site.testapp import tasks
from helpers import wait_until

import taskpool
from django_integration.models import TaskRecord


def test_task_runs_and_its_row_is_recorded_in_the_django_database(django_supervisor):
    handle = taskpool.submit(tasks.add, 2, 3)
    assert TaskRecord.objects.filter(pk=handle.id).exists()  # written before submit() returned
    assert handle.result(timeout=15) == 5
    record = wait_until(lambda: TaskRecord.objects.filter(pk=handle.id, status="SUCCESSFUL").first())
    assert record.result == 5 and record.attempts == 1 and record.finished_at is not None


def test_workers_use_the_orm(django_supervisor):
    assert taskpool.submit(tasks.count_records).result(timeout=15) >= 1


def test_rolled_back_transaction_leaves_no_task_and_runs_nothing(django_supervisor):
    with pytest.raises(RuntimeError), transaction.atomic():
        handle = taskpool.submit(tasks.add, 1, 1)
        assert TaskRecord.objects.filter(pk=handle.id).exists()  # visible inside the transaction
        raise RuntimeError("the view failed")
    assert not TaskRecord.objects.filter(pk=handle.id).exists()
    later = taskpool.submit(tasks.add, 2, 2)
    assert later.result(timeout=15) == 4
    with pytest.raises(taskpool.TaskNotFound):
        handle.refresh()
    counters = django_supervisor.stats()["counters"]
    assert counters["submitted"] + counters["adopted"] == 1  # a sweep may adopt the row before its Submit


def test_committed_transaction_notifies_the_supervisor_on_commit(django_supervisor):
    with transaction.atomic():
        handle = taskpool.submit(tasks.add, 20, 22)
        assert django_supervisor.stats()["counters"]["submitted"] == 0  # not told before commit
    assert handle.result(timeout=15) == 42


def test_progress_is_recorded_in_the_row(django_supervisor):
    handle = taskpool.submit(tasks.report, 20, 0.05)
    wait_until(lambda: (TaskRecord.objects.get(pk=handle.id).progress or 0) > 0, timeout=15, message="progress row")
    assert handle.result(timeout=15) == {"steps": 20}
    record = wait_until(lambda: TaskRecord.objects.filter(pk=handle.id, status="SUCCESSFUL").first())
    assert record.progress == 100.0


def test_sigkill_of_the_whole_tree_is_recovered_from_the_django_table(django_supervisor, django_spool, tmp_path):
    import os
    import signal

    from conftest import start_django_supervisor
    from helpers import pid_gone

    gate = tmp_path / "gate"
    running = taskpool.submit(tasks.wait_for_file, str(gate))
    waiting = taskpool.submit(tasks.add, 5, 6)
    wait_until(lambda: TaskRecord.objects.filter(pk=running.id, status="RUNNING").exists(), timeout=15)
    pids = [django_supervisor.pid, *django_supervisor.children()]
    os.killpg(django_supervisor.pid, signal.SIGKILL)
    wait_until(lambda: all(pid_gone(p) for p in pids), message="the whole tree gone")
    gate.touch()
    again = start_django_supervisor(django_spool)
    try:
        assert running.result(timeout=20) == "released" and waiting.result(timeout=20) == 11
        record = wait_until(lambda: TaskRecord.objects.filter(pk=running.id, status="SUCCESSFUL").first(), timeout=15)
        assert record.attempts == 2
        assert record.errors[0]["type"] == "taskpool.errors.WorkerLost"
    finally:
        again.cleanup()
