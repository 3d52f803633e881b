"""Django tests: a real Django-mode supervisor sharing the test database (a SQLite file)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from django.conf import settings
from helpers import RunningSupervisor

import taskpool
from taskpool.client import Client
from taskpool.stores import open_store


@pytest.fixture
def django_spool(tmp_path) -> Path:
    return tmp_path / "spool"


@pytest.fixture
def taskpool_settings(settings, django_spool):
    """TASKPOOL pointing at this test's spool, and the client configured for it."""
    settings.TASKPOOL = {"SPOOL": str(django_spool)}
    taskpool.configure(spool=str(django_spool), socket="", store="django", immediate=False)
    yield settings.TASKPOOL
    taskpool.configure(spool="", socket="", store="", immediate=False)


def start_django_supervisor(spool: Path) -> RunningSupervisor:
    """A ready `taskpool-supervisor --workers 2` in Django mode on the test database."""
    env = {
        "DJANGO_SETTINGS_MODULE": os.environ["DJANGO_SETTINGS_MODULE"],
        "TASKPOOL_TEST_DB": str(settings.DATABASES["default"]["NAME"]),
        "TASKPOOL_SPOOL": str(spool),
    }
    sup = RunningSupervisor(spool, ["--workers", "2", "--graceful-timeout", "5"],
                            env=env, store="django")
    try:
        sup.wait_ready()
    except BaseException:
        sup.cleanup()
        raise
    return sup


@pytest.fixture
def django_supervisor(transactional_db, taskpool_settings, django_spool):
    sup = start_django_supervisor(django_spool)
    try:
        yield sup
    finally:
        sup.cleanup()


@pytest.fixture
def django_store():
    return open_store("django", "")


@pytest.fixture
def client_for(django_spool):
    return Client(str(django_spool / "taskpool.sock"))
