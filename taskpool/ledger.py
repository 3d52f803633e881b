"""The supervisor's book of tasks: the one place where a task changes state.

Every transition (accept, start, progress, retry, finish) is a method here, and
each one tells the listeners (``listen``): the waiters of ``Query(wait=...)``
today, the recorder that persists status tomorrow. Nothing else assigns
``TaskState.status``. Finished tasks are kept, newest last, up to ``keep_finished``
so that handles can read their result; older ones are forgotten.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from .protocol import (
    CANCELLED,
    FAILED,
    FINAL_STATUSES,
    READY,
    RUNNING,
    SUCCESSFUL,
    Submit,
    TaskInfo,
)
from .records import record

TYPE_CHECKING = False  # typing stays unimported at run time (docs/performance.md, idle RSS)
if TYPE_CHECKING:
    from typing import Any

Listener = Callable[["TaskState", str], None]


@record
class _Run:
    """What a task gains once it starts: absent (None) while it waits, 48 bytes less for
    each of a backlog's READY tasks."""

    progress: float | None = None
    progress_message: str | None = None
    result: Any = None
    started_at: float | None = None  # the first attempt's start
    last_attempted_at: float | None = None
    finished_at: float | None = None


def _run_field(name: str) -> property:
    """A TaskState attribute kept in its ``_Run`` (None until the task has one)."""

    def get(self: TaskState) -> Any:
        run = self.run
        return None if run is None else getattr(run, name)

    def put(self: TaskState, value: Any) -> None:
        if self.run is None:
            if value is None:
                return
            self.run = _Run()
        setattr(self.run, name, value)

    return property(get, put)


@record
class TaskState:
    task_id: str
    name: str
    args: list | tuple
    kwargs: dict
    priority: int
    run_after: float | None
    max_attempts: int
    timeout: float | None
    queue: str
    status: str = READY
    attempts: int = 0
    errors: list | tuple = ()  # a shared empty tuple until the first error: 56 bytes less per READY task
    worker_pids: list | tuple = ()
    enqueued_at: float = 0.0
    run: _Run | None = None

    progress = _run_field("progress")
    progress_message = _run_field("progress_message")
    result = _run_field("result")
    started_at = _run_field("started_at")
    last_attempted_at = _run_field("last_attempted_at")
    finished_at = _run_field("finished_at")

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES

    def info_fields(self) -> tuple:
        return (self.task_id, self.name, self.status, self.attempts, self.progress, self.progress_message,
                self.result, list(self.errors[-INFO_ERRORS:]), list(self.worker_pids))

    def add_error(self, error: dict) -> None:
        if self.errors:
            self.errors.append(error)  # type: ignore[union-attr]  # a list once non-empty
        else:
            self.errors = [error]

    def info(self) -> TaskInfo:
        return TaskInfo(*self.info_fields())


DEFAULT_MAX_ATTEMPTS = 3
NO_ARGS: tuple = ()  # shared by every task without arguments, and by finished tasks
NO_KWARGS: dict = {}  # never mutated: the supervisor only forwards a task's arguments
INFO_ERRORS = 10  # a TaskInfo reply carries the last errors; the store keeps every one


def _pick(given: Any, defaults: dict, key: str, fallback: Any) -> Any:
    if given is not None:
        return given
    return defaults.get(key, fallback)


def error_dict(type_path: str, message: str, traceback: str = "") -> dict:
    return {"type": type_path, "message": message, "traceback": traceback}


class Ledger:
    def __init__(self, keep_finished: int) -> None:
        self.keep_finished = keep_finished
        self.active: dict[str, TaskState] = {}
        self.finished: OrderedDict[str, TaskState] = OrderedDict()
        self.counters = {"submitted": 0, "adopted": 0, "succeeded": 0, "failed": 0, "cancelled": 0, "retried": 0}
        self._listeners: list[Listener] = []
        self.names: dict[str, str] = {}  # registered task names: one string shared by all their tasks

    def listen(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def _tell(self, task: TaskState, event: str) -> None:
        for listener in self._listeners:
            listener(task, event)

    def get(self, task_id: str) -> TaskState | None:
        return self.active.get(task_id) or self.finished.get(task_id)

    def accept(self, msg: Submit, defaults: dict | None, wall_now: float | None = None) -> TaskState:
        """A new READY task; options the Submit left None come from ``defaults``
        (the task's registered options), else from the built-in defaults. ``wall_now``:
        the loop pass's wall clock, one float shared by the tasks it accepts."""
        known = defaults or {}
        task = TaskState(
            msg.task_id, self.names.get(msg.name, msg.name), tuple(msg.args) if msg.args else NO_ARGS,
            msg.kwargs or NO_KWARGS,  # a tuple is 24 bytes smaller than a list of the same arguments
            _pick(msg.priority, known, "priority", 0),
            msg.run_after,
            _pick(msg.max_attempts, known, "max_attempts", DEFAULT_MAX_ATTEMPTS),
            _pick(msg.timeout, known, "timeout", None),
            _pick(msg.queue, known, "queue", "default"),
            enqueued_at=time.time() if wall_now is None else wall_now,
        )
        self.active[task.task_id] = task
        self.counters["submitted"] += 1
        # "stored": the client wrote the row with these very options, so only held_by is new
        stored = msg.stored and (task.priority, task.max_attempts, task.timeout, task.queue) == (
            msg.priority or 0, msg.max_attempts or DEFAULT_MAX_ATTEMPTS, msg.timeout, msg.queue or "default")
        self._tell(task, "stored" if stored else "accepted")
        return task

    def adopt(self, row: Any) -> TaskState:
        """A READY row the recorder claimed from the store (submitted while no
        supervisor held it, or left by one that died)."""
        task = TaskState(
            row.task_id, row.name, row.args, row.kwargs, row.priority, row.run_after, row.max_attempts,
            row.timeout, row.queue, attempts=row.attempts, errors=list(row.errors) if row.errors else (),
            worker_pids=list(row.worker_ids) if row.worker_ids else (), enqueued_at=row.enqueued_at,
        )
        task.started_at = row.started_at
        self.active[task.task_id] = task
        self.counters["adopted"] += 1
        self._tell(task, "adopted")
        return task

    def start(self, task: TaskState, worker_pid: int) -> None:
        task.status = RUNNING
        task.attempts += 1
        task.last_attempted_at = time.time()
        if task.started_at is None:
            task.started_at = task.last_attempted_at
        if task.worker_pids:
            task.worker_pids.append(worker_pid)  # type: ignore[union-attr]  # a list once non-empty
        else:
            task.worker_pids = [worker_pid]
        self._tell(task, "started")

    def report_progress(self, task: TaskState, percent: float, message: str | None) -> None:
        task.progress = float(percent)
        task.progress_message = message
        self._tell(task, "progress")

    def retry(self, task: TaskState, error: dict, run_after: float | None = None) -> None:
        """Back to READY after a failed attempt (the caller queues it again)."""
        task.status = READY
        task.run_after = run_after
        task.add_error(error)
        self.counters["retried"] += 1
        self._tell(task, "retried")

    def interrupt(self, task: TaskState, why: str) -> None:
        """Back to READY because the supervisor stopped it (not the task's fault):
        the attempt is given back."""
        task.status = READY
        task.attempts = max(0, task.attempts - 1)
        if task.worker_pids:
            task.worker_pids.pop()  # type: ignore[union-attr]  # the interrupted run does not count (attempts == len(worker_ids))
        task.progress_message = why
        self._tell(task, "interrupted")

    def succeed(self, task: TaskState, result: Any) -> None:
        task.result = result
        if task.progress is not None:
            task.progress = 100.0
        self._finish(task, SUCCESSFUL, "succeeded")

    def fail(self, task: TaskState, error: dict) -> None:
        task.add_error(error)
        self._finish(task, FAILED, "failed")

    def cancel(self, task: TaskState, error: dict | None = None) -> None:
        if error:
            task.add_error(error)
        self._finish(task, CANCELLED, "cancelled")

    def _finish(self, task: TaskState, status: str, counter: str) -> None:
        if task.is_final:  # exactly one final status per task
            return
        task.status = status
        task.finished_at = time.time()
        task.args, task.kwargs = NO_ARGS, NO_KWARGS  # no longer needed; keep memory bounded
        self.counters[counter] += 1
        self.active.pop(task.task_id, None)
        self.finished[task.task_id] = task
        while len(self.finished) > self.keep_finished:
            self.finished.popitem(last=False)
        self._tell(task, "finished")
