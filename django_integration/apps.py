"""The Django app: label ``taskpool``; points the taskpool client at the Django settings."""

from __future__ import annotations

from django.apps import AppConfig


class TaskpoolConfig(AppConfig):
    name = "django_integration"
    label = "taskpool"
    verbose_name = "Task pool"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks  # noqa: F401 - registers the system checks
        from .conf import configure_client

        configure_client()
