"""Immediate mode: run a task inline in the caller and record its row, no supervisor.

The uWSGI spooler's fallback, for tests and ``runserver``: ``submit()`` runs the
task at once (after the caller's transaction commits, with the django store) and
records READY -> RUNNING -> SUCCESSFUL/FAILED in the store, so views and handles
behave as they will in production. One attempt, no timeout, no retries: the
point is to exercise the code path, not the pool. Here the caller's process
writes status, the one exception to "only the recorder writes status".
"""

from __future__ import annotations

import os
import time
from typing import Any

from . import worker
from .errors import InvalidArguments, UnknownTask
from .json_values import check_json_compatible
from .ledger import INFO_ERRORS
from .protocol import FAILED, RUNNING, SUCCESSFUL, Submit, TaskInfo
from .registry import default_registry
from .stores.base import Store, TaskRow


class _InlineProgress:
    """Stands in for a worker's channel: progress goes straight to the row."""

    def __init__(self, row: TaskRow, store: Store) -> None:
        self.row, self.store = row, store

    def progress(self, percent: float, message: str | None) -> None:
        self.row.progress, self.row.progress_message = percent, message
        self.store.record([self.row])

    def flush(self) -> None:
        pass


def run_inline(msg: Submit, row: TaskRow, store: Store) -> TaskInfo:
    """Run the task now; returns its final state (also recorded in the store)."""
    task = default_registry.get(msg.name)
    if task is None:
        raise UnknownTask("unknown_task", f"no task named {msg.name!r} is registered in this process")
    row.status, row.attempts = RUNNING, 1
    row.started_at = row.last_attempted_at = time.time()
    row.worker_ids = [os.getpid()]
    store.record([row])
    previous, worker._current = worker._current, _InlineProgress(row, store)
    try:
        row.result = _call(task.func, msg.args, msg.kwargs)
        row.status = SUCCESSFUL
        if row.progress is not None:
            row.progress = 100.0
    except Exception as exc:  # the task's failure is recorded, as a worker would
        row.status, row.result = FAILED, None
        row.errors = [*row.errors, worker.error_of(exc)]
    except SystemExit as exc:
        row.status, row.result = FAILED, None
        row.errors = [*row.errors, worker.error_of(RuntimeError(f"task called sys.exit({exc.code})"))]
    except KeyboardInterrupt as exc:
        row.status, row.result = FAILED, None
        row.errors = [*row.errors, worker.error_of(exc)]
    finally:
        worker._current = previous
    row.finished_at = time.time()
    store.record([row])
    return TaskInfo(row.task_id, row.name, row.status, row.attempts, row.progress, row.progress_message,
                    row.result, row.errors[-INFO_ERRORS:], row.worker_ids)


def _call(func: Any, args: list, kwargs: dict) -> Any:
    import asyncio
    import inspect

    result = func(*args, **kwargs)
    if inspect.iscoroutine(result):
        result = asyncio.run(result)
    try:
        check_json_compatible(result, "result")
    except InvalidArguments as exc:
        raise InvalidArguments(f"the task returned a value that cannot be stored: {exc}") from None
    return result
