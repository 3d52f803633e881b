"""taskpool: background tasks for Django without Celery, Redis or RabbitMQ.

Public API::

    @taskpool.task(timeout=30)           # register a function as a task
    taskpool.submit(add, 2, 3)           # -> TaskHandle (also by name, or add.submit(2, 3))
    handle.result(timeout=5)             # the return value, or TaskFailed
    taskpool.wait(handles, timeout=60)   # many tasks in a few round trips
    taskpool.progress(40, "rendering")   # inside a task
    taskpool.stats()                     # the supervisor's health figures

The client half (``submit``, ``TaskHandle``...) is imported on first use (``__getattr__``
below; ``from taskpool import submit`` works as usual): the supervisor imports this
package but never the client, and whatever it has imported when it forks is counted
again in the RSS of every worker and the recorder.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import (  # noqa: E402
    ConfigError,
    InvalidArguments,
    ProtocolError,
    RemoteError,
    ResultTimeout,
    Retry,
    StoreError,
    SupervisorUnavailable,
    TaskFailed,
    TaskNotFound,
    TaskpoolError,
    TaskTimeout,
    UnknownTask,
)
from .registry import Task, task  # noqa: E402
from .worker import progress  # noqa: E402

TYPE_CHECKING = False  # typing stays unimported at run time (docs/performance.md, idle RSS)
if TYPE_CHECKING:
    from typing import Any

    from .client import TaskHandle, cancel, configure, get, stats, submit, submit_and_wait, submit_many, wait

_CLIENT_NAMES = frozenset({
    "TaskHandle", "cancel", "configure", "get", "stats", "submit", "submit_and_wait", "submit_many", "wait",
})


def __getattr__(name: str) -> Any:
    """Import the client at the first use of one of its names (see the module docstring)."""
    if name in _CLIENT_NAMES:
        from . import client

        value = getattr(client, name)
        globals()[name] = value  # later lookups find it directly
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_CLIENT_NAMES})


__all__ = [
    "ConfigError", "InvalidArguments", "ProtocolError", "RemoteError", "ResultTimeout", "Retry", "StoreError",
    "SupervisorUnavailable", "Task", "TaskFailed", "TaskHandle", "TaskNotFound", "TaskTimeout",
    "TaskpoolError", "UnknownTask", "__version__", "cancel", "configure", "get", "progress",
    "stats", "submit", "submit_and_wait", "submit_many", "task", "wait",
]
