"""What a forked worker or recorder does to become a Django process.

Set as the workers' ``post_fork`` hook in Django mode: ``django.setup()`` after the
fork (so a SIGHUP reload runs new code), import every installed app's ``tasks``
module, register Django Tasks-framework tasks bound to the taskpool backend, and
close stale database connections before and after each task, as Django does
between requests.
"""

from __future__ import annotations

import django
from django.apps import apps


def ensure_django() -> None:
    if not apps.ready:
        django.setup()


def setup_worker() -> None:
    from django.db import close_old_connections
    from django.utils.module_loading import autodiscover_modules

    from taskpool.worker import on_task_boundary

    ensure_django()
    autodiscover_modules("tasks")
    from . import backend

    backend.register_tasks()
    on_task_boundary(close_old_connections)
