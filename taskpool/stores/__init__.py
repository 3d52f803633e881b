"""Stores keep the task rows: the truth that survives crashes and restarts.

``open_store(kind, spool)`` returns one of: ``sqlite`` (a WAL database in the
spool directory; the default), ``memory`` (nothing persisted: the supervisor's
ledger is all there is) or, with Django, ``django`` (see django_integration).
"""

from __future__ import annotations

import importlib

from ..errors import ConfigError
from .base import Store, SupervisorRecord, TaskRow

STORES = {
    "sqlite": "taskpool.stores.sqlite:SqliteStore",
    "memory": "taskpool.stores.memory:MemoryStore",
    "django": "django_integration.store:DjangoStore",
}


def open_store(kind: str, spool: str) -> Store:
    """The store named ``kind``; raises ConfigError for an unknown name."""
    target = STORES.get(kind)
    if target is None:
        raise ConfigError(f"store must be one of {', '.join(sorted(STORES))}, got {kind!r}")
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr).open(spool)


__all__ = ["STORES", "Store", "SupervisorRecord", "TaskRow", "open_store"]
