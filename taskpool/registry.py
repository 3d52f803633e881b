"""The ``@taskpool.task`` decorator: task names, options and the registry.

Only functions registered here can be run, and only by name: a frame names a
task, never a callable. Workers import the user's modules after fork, which
fills their registry; the supervisor learns the names from each worker's Ready
frame and never imports user code itself.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Callable

from .errors import ConfigError, TaskTimeout
from .records import record, replace

TYPE_CHECKING = False  # typing stays unimported at run time (docs/performance.md, idle RSS)
if TYPE_CHECKING:
    from typing import Any

MIN_PRIORITY, MAX_PRIORITY = -100, 100  # Django's Tasks framework uses the same range


@record(frozen=True)
class TaskOptions:
    """Per-task defaults, overridable per call with ``Task.using``."""

    priority: int = 0
    queue: str = "default"
    max_attempts: int = 3
    timeout: float | None = None
    run_after: float | None = None  # wall-clock epoch seconds
    retry_for: tuple[type[BaseException], ...] = ()
    retry_backoff: float = 1.0  # seconds before the first retry; doubles each attempt
    retry_backoff_max: float = 600.0

    def __post_init__(self) -> None:
        if type(self.priority) is not int or not MIN_PRIORITY <= self.priority <= MAX_PRIORITY:
            raise ConfigError(f"priority must be an integer from {MIN_PRIORITY} to {MAX_PRIORITY}, got {self.priority!r}")
        if type(self.max_attempts) is not int or self.max_attempts < 1:
            raise ConfigError(f"max_attempts must be an integer of at least 1, got {self.max_attempts!r}")
        if self.timeout is not None and not (isinstance(self.timeout, (int, float)) and self.timeout > 0):
            raise ConfigError(f"timeout must be a number of seconds greater than 0, got {self.timeout!r}")
        if not isinstance(self.queue, str) or not self.queue:
            raise ConfigError(f"queue must be a non-empty string, got {self.queue!r}")
        if not all(isinstance(k, type) and issubclass(k, BaseException) for k in self.retry_for):
            raise ConfigError(f"retry_for must be a tuple of exception classes, got {self.retry_for!r}")
        for name in ("retry_backoff", "retry_backoff_max"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
                raise ConfigError(f"{name} must be a number of seconds, 0 or more, got {value!r}")


def backoff_delay(attempt: int, base: float, ceiling: float) -> float:
    """Exponential backoff with jitter: about base * 2**(attempt-1), capped at ceiling,
    drawn from its upper half so retries of many tasks spread out but never bunch at 0."""
    import random  # on the retry path only: the supervisor imports this module before it forks

    delay = min(ceiling, base * 2 ** max(0, attempt - 1))
    return delay / 2 + random.uniform(0, delay / 2)


def _epoch(run_after: Any) -> float | None:
    if run_after is None:
        return None
    if isinstance(run_after, dt.datetime):
        if run_after.tzinfo is None:
            raise ConfigError("run_after must be a timezone-aware datetime")
        return run_after.timestamp()
    if isinstance(run_after, (int, float)) and not isinstance(run_after, bool) and math.isfinite(run_after):
        return float(run_after)
    raise ConfigError(f"run_after must be an aware datetime or epoch seconds, got {run_after!r}")


class Task:
    """A registered function. Calling it runs it here; ``submit`` sends it to the pool."""

    def __init__(self, func: Callable[..., Any], name: str, options: TaskOptions) -> None:
        self.func = func
        self.name = name
        self.options = options
        self.__doc__ = func.__doc__
        self.__wrapped__ = func

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.func(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<taskpool.Task {self.name}>"

    def using(
        self,
        *,
        priority: int | None = None,
        queue_name: str | None = None,
        run_after: Any = None,
        delay: float | None = None,
        timeout: float | None = None,
        max_attempts: int | None = None,
    ) -> Task:
        """A copy with per-call options (names follow Django's ``Task.using``)."""
        changes: dict[str, Any] = {}
        if priority is not None:
            changes["priority"] = priority
        if queue_name is not None:
            changes["queue"] = queue_name
        if timeout is not None:
            changes["timeout"] = timeout
        if max_attempts is not None:
            changes["max_attempts"] = max_attempts
        if delay is not None and run_after is not None:
            raise ConfigError("give delay or run_after, not both")
        if delay is not None:
            if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not 0 <= delay < math.inf:
                raise ConfigError(f"delay must be a number of seconds, 0 or more, got {delay!r}")
            changes["run_after"] = time.time() + delay
        elif run_after is not None:
            changes["run_after"] = _epoch(run_after)
        return Task(self.func, self.name, replace(self.options, **changes))

    def submit(self, *args: Any, **kwargs: Any):
        """Send this task to the supervisor; returns a ``TaskHandle`` at once."""
        from .client import submit  # the client sits above the registry

        return submit(self, *args, **kwargs)


class Registry:
    """Name -> Task. One instance per process (``default_registry``)."""

    def __init__(self) -> None:
        self._tasks: dict[str, Task] = {}

    def register(self, task: Task) -> Task:
        existing = self._tasks.get(task.name)
        if existing is not None and existing.func.__code__ is not task.func.__code__:
            raise ConfigError(f"task name {task.name!r} is already registered by {existing.func!r}")
        self._tasks[task.name] = task
        return task

    def get(self, name: str) -> Task | None:
        return self._tasks.get(name)

    def names(self) -> list[str]:
        return sorted(self._tasks)

    def defaults(self) -> dict[str, dict]:
        """Each task's default options, as a worker reports them to the supervisor."""
        return {
            name: {"priority": t.options.priority, "queue": t.options.queue,
                   "max_attempts": t.options.max_attempts, "timeout": t.options.timeout,
                   "retry_on_timeout": any(issubclass(k, TaskTimeout) for k in t.options.retry_for),
                   "retry_backoff": t.options.retry_backoff, "retry_backoff_max": t.options.retry_backoff_max}
            for name, t in sorted(self._tasks.items())
        }


default_registry = Registry()


def task(
    func: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    priority: int = 0,
    queue_name: str = "default",
    max_attempts: int = 3,
    timeout: float | None = None,
    retry_for: tuple[type[BaseException], ...] | type[BaseException] = (),
    retry_backoff: float = 1.0,
    retry_backoff_max: float = 600.0,
) -> Any:
    """Register a function as a task: ``@task`` or ``@task(timeout=30, retry_for=(IOError,))``.

    ``retry_for`` lists exceptions that earn another attempt (up to ``max_attempts``)
    after an exponential backoff starting at ``retry_backoff`` seconds; name
    ``taskpool.TaskTimeout`` to retry timeouts too. A worker's death is always retried."""
    if isinstance(retry_for, type):
        retry_for = (retry_for,)

    def register(fn: Callable[..., Any]) -> Task:
        if not callable(fn):
            raise ConfigError(f"@taskpool.task needs a function, got {fn!r}")
        task_name = name or f"{fn.__module__}.{fn.__qualname__}"
        options = TaskOptions(
            priority=priority, queue=queue_name, max_attempts=max_attempts, timeout=timeout,
            retry_for=tuple(retry_for), retry_backoff=retry_backoff, retry_backoff_max=retry_backoff_max,
        )
        return default_registry.register(Task(fn, task_name, options))

    return register(func) if func is not None else register
