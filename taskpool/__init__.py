"""taskpool: background tasks for Django without Celery, Redis or RabbitMQ.

Public API::

    @taskpool.task(timeout=30)           # register a function as a task
    taskpool.submit(add, 2, 3)           # -> TaskHandle (also by name, or add.submit(2, 3))
    handle.result(timeout=5)             # the return value, or TaskFailed
    taskpool.wait(handles, timeout=60)   # many tasks in a few round trips
    taskpool.progress(40, "rendering")   # inside a task
    taskpool.stats()                     # the supervisor's health figures
"""

__version__ = "0.1.0"

from .client import TaskHandle, cancel, configure, get, stats, submit, submit_many, wait  # noqa: E402
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

__all__ = [
    "ConfigError", "InvalidArguments", "ProtocolError", "RemoteError", "ResultTimeout", "Retry", "StoreError",
    "SupervisorUnavailable", "Task", "TaskFailed", "TaskHandle", "TaskNotFound", "TaskTimeout",
    "TaskpoolError", "UnknownTask", "__version__", "cancel", "configure", "get", "progress",
    "stats", "submit", "submit_many", "task", "wait",
]
