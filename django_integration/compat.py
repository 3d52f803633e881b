"""One import place for Django's Tasks framework: ``django.tasks`` on Django >= 6.0, else the
``django-tasks`` backport (``pip install django-tasks``) on Django 5.2.

Names are Django 6's; the backport's older exception names (``InvalidTaskError``,
``InvalidTaskBackendError``) are exported under them. ``LOGGER_NAME`` is the logger the
framework's signal receivers log to ("django.tasks", or "django_tasks" in the backport).
Importing ``signals`` connects those logging receivers, so the log lines appear even when
the backport's app is not in INSTALLED_APPS.
"""

from __future__ import annotations

import django

if django.VERSION >= (6, 0):
    from django.tasks import (
        DEFAULT_TASK_BACKEND_ALIAS,
        Task,
        TaskContext,
        TaskResult,
        TaskResultStatus,
        signals,
        task,
        task_backends,
    )
    from django.tasks.backends.base import BaseTaskBackend
    from django.tasks.base import TASK_REFRESH_ATTRS, TaskError
    from django.tasks.exceptions import InvalidTask, InvalidTaskBackend, TaskResultDoesNotExist, TaskResultMismatch
    from django.utils.json import normalize_json

    LOGGER_NAME = "django.tasks"
else:  # pragma: no cover - exercised in the Django 5.2 environment
    try:
        from django_tasks import DEFAULT_TASK_BACKEND_ALIAS, signals, task_backends
    except ImportError as exc:
        raise ImportError(
            f"Django {django.get_version()} has no django.tasks: install the backport with `pip install django-tasks`"
        ) from exc
    from django_tasks.backends.base import BaseTaskBackend
    from django_tasks.base import (
        TASK_REFRESH_ATTRS,
        Task,
        TaskContext,
        TaskError,
        TaskResult,
        TaskResultStatus,
        task,
    )
    from django_tasks.exceptions import InvalidTaskBackendError as InvalidTaskBackend
    from django_tasks.exceptions import InvalidTaskError as InvalidTask
    from django_tasks.exceptions import TaskResultDoesNotExist, TaskResultMismatch
    from django_tasks.utils import normalize_json

    LOGGER_NAME = "django_tasks"

task_enqueued = signals.task_enqueued
task_started = signals.task_started
task_finished = signals.task_finished

__all__ = [
    "DEFAULT_TASK_BACKEND_ALIAS", "LOGGER_NAME", "TASK_REFRESH_ATTRS", "BaseTaskBackend", "InvalidTask",
    "InvalidTaskBackend", "Task", "TaskContext", "TaskError", "TaskResult", "TaskResultDoesNotExist",
    "TaskResultMismatch", "TaskResultStatus", "normalize_json", "signals", "task", "task_backends",
    "task_enqueued", "task_finished", "task_started",
]
