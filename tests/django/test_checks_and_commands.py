"""System checks on TASKPOOL, immediate mode, and manage.py taskpool_supervisor."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from django.conf import settings
from django.db import transaction
from django_site.testapp import tasks
from helpers import ROOT, TESTS_DIR, pid_gone, wait_until

import taskpool
from django_integration.checks import check_settings
from django_integration.models import TaskRecord
from taskpool.client import Client
from taskpool.protocol import StatsRequest


def ids(messages) -> set[str]:
    return {m.id for m in messages}


def test_good_settings_pass_the_checks(settings):
    settings.TASKPOOL = {"SPOOL": "/srv/app/spool", "WORKERS": 4, "IMMEDIATE": False}
    assert check_settings() == []


@pytest.mark.parametrize(
    ("value", "expected_id", "words"),
    [
        ("not a dict", "taskpool.E001", "must be a dict"),
        ({"SPOOL": "/s", "WORKRES": 4}, "taskpool.E002", "WORKRES"),
        ({"SPOOL": "/s", "IMMEDIATE": "yes"}, "taskpool.E003", "IMMEDIATE"),
        ({"SPOOL": "/s", "WORKERS": 0}, "taskpool.E004", "workers"),
        ({"SPOOL": "/s", "STORE": "redis"}, "taskpool.E004", "store"),
        ({"SPOOL": "/s", "SOCKET_MODE": "777"}, "taskpool.E004", "socket_mode"),
        ({}, "taskpool.W001", "SPOOL"),
    ],
)
def test_bad_settings_are_reported_clearly(settings, value, expected_id, words):
    settings.TASKPOOL = value
    problems = [m for m in check_settings() if m.id == expected_id]
    assert problems, check_settings()
    assert words in problems[0].msg


def test_sqlite_without_immediate_transactions_is_warned_about(settings):
    settings.TASKPOOL = {"SPOOL": "/srv/app/spool"}
    database = dict(settings.DATABASES["default"])
    database["OPTIONS"] = {k: v for k, v in database.get("OPTIONS", {}).items() if k != "transaction_mode"}
    settings.DATABASES = {**settings.DATABASES, "default": database}
    [warning] = [m for m in check_settings() if m.id == "taskpool.W003"]
    assert "transaction_mode" in warning.msg and "IMMEDIATE" in warning.hint
    settings.TASKPOOL = {"SPOOL": "/srv/app/spool", "STORE": "sqlite"}  # rows not in the project's database
    assert "taskpool.W003" not in ids(check_settings())


@pytest.mark.django_db(transaction=True)
def test_immediate_mode_runs_inline_and_records_the_row(taskpool_settings):
    taskpool.configure(immediate=True)
    handle = taskpool.submit(tasks.report, 3, 0.0)
    record = TaskRecord.objects.get(pk=handle.id)
    assert record.status == "SUCCESSFUL" and record.result == {"steps": 3} and record.progress == 100.0
    assert handle.status == "SUCCESSFUL" and handle.result(timeout=1) == {"steps": 3}


@pytest.mark.django_db(transaction=True)
def test_immediate_mode_waits_for_commit_and_rolls_back_with_the_view(taskpool_settings):
    taskpool.configure(immediate=True)
    with pytest.raises(RuntimeError), transaction.atomic():
        dropped = taskpool.submit(tasks.add, 1, 1)
        assert TaskRecord.objects.get(pk=dropped.id).status == "READY"  # not run before commit
        raise RuntimeError("view failed")
    assert not TaskRecord.objects.filter(pk=dropped.id).exists()
    with transaction.atomic():
        kept = taskpool.submit(tasks.add, 2, 3)
    assert TaskRecord.objects.get(pk=kept.id).result == 5


def test_management_command_help_lists_the_supervisor_flags():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "example" / "manage.py"), "taskpool_supervisor", "--help"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "example_site.settings"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "--workers" in proc.stdout and "--graceful-timeout" in proc.stdout


@pytest.mark.django_db(transaction=True)
def test_management_command_runs_a_django_mode_supervisor(tmp_path):
    spool = tmp_path / "spool"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "django_site.settings",
        "TASKPOOL_TEST_DB": str(settings.DATABASES["default"]["NAME"]),
        "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), str(ROOT)]),
    }
    manage = [sys.executable, "-m", "django"]
    proc = subprocess.Popen(
        [*manage, "taskpool_supervisor", "--workers", "1", "--spool", str(spool)],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    client = Client(str(spool / "taskpool.sock"), timeout=5)
    try:
        data = wait_until(lambda: client.request(StatsRequest()).data, timeout=30, message="supervisor up")
        assert data["pid"] == proc.pid  # exec'd in place: the command's process is the supervisor
        assert data["store"] == "django"
        wait_until(lambda: any(w["state"] == "idle" for w in client.request(StatsRequest()).data["workers"]),
                   timeout=30, message="a Django worker ready")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    assert pid_gone(proc.pid)
