"""``TaskpoolBackend``: Django's Tasks framework (``django.tasks``, or the ``django-tasks``
backport on Django 5.2) on top of taskpool's pre-forked workers::

    TASKS = {"default": {"BACKEND": "django_integration.backend.TaskpoolBackend"}}

    @task(priority=10)
    def send_report(user_id): ...

    result = send_report.enqueue(42)      # a READY TaskResult; the row is in your transaction
    result.refresh()                      # or default_task_backend.get_result(result.id)

``enqueue`` goes through ``taskpool.client.submit_many``, which does what ``taskpool.submit``
does: with the ``django`` store (the default) the task's row is written in the caller's
transaction and the supervisor is told once it commits (a rolled-back transaction leaves
no task); other stores are not transactional (``manage.py check`` warns, taskpool.W002). The task is named by its
``module_path``; ``priority``, ``queue_name`` and ``run_after`` come from the Task; the
id is taskpool's (32 hex characters). ``task_enqueued`` is sent once the row is written,
before the supervisor is told, so it always precedes the worker's ``task_started``. With
``TASKPOOL['IMMEDIATE']`` (or ``taskpool.configure(immediate=True)``) the task runs inline
through taskpool's immediate mode and ``enqueue`` returns the finished result, as Django's
ImmediateBackend does - unless the caller is inside ``transaction.atomic()``: taskpool's
immediate mode runs the task when the transaction commits, so the result is READY until then.

Workers run only Django tasks that ``register_tasks()`` found in already-imported code
(called by ``runtime.setup_worker`` in each Django-mode worker): a name read from the wire
is looked up in taskpool's registry, never imported. Each attempt reads its row once (for
``enqueued_at`` and earlier attempts) to build the TaskResult that ``task_started``,
``task_finished`` and ``TaskContext`` carry. Django tasks take taskpool's default options:
no timeout, no retry on exceptions, and up to 3 attempts when a worker dies mid-task.

Results are read from the task's row (``TaskRecord``), which the supervisor's recorder
writes within 0.1 s of each change (its batches, ``WRITE_DELAY``): ``get_result`` is a little behind the supervisor, never
inconsistent with itself. Status mapping: READY, RUNNING, SUCCESSFUL and FAILED are Django's;
taskpool's CANCELLED has no Django equivalent and is reported as FAILED, with a
``taskpool.errors.Cancelled`` TaskError. ``worker_ids`` are the pids of the workers that ran
the task, one per attempt (a worker that died mid-task earns another attempt, recorded as a
``taskpool.errors.WorkerLost`` error); ``errors`` has one TaskError per failed attempt.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.utils import timezone
from django.utils.module_loading import import_string

from taskpool import client, worker
from taskpool.errors import StoreError
from taskpool.json_values import check_json_compatible
from taskpool.protocol import CANCELLED, FAILED, READY, RUNNING, SUCCESSFUL
from taskpool.registry import Task as PoolTask
from taskpool.registry import TaskOptions, default_registry
from taskpool.stores.base import Store, TaskRow

from .compat import (
    BaseTaskBackend,
    Task,
    TaskContext,
    TaskError,
    TaskResult,
    TaskResultDoesNotExist,
    TaskResultStatus,
    normalize_json,
    task_backends,
    task_enqueued,
    task_finished,
    task_started,
)

__all__ = ["TaskpoolBackend", "register_tasks"]

log = logging.getLogger("taskpool.django")

STATUS = {
    READY: TaskResultStatus.READY,
    RUNNING: TaskResultStatus.RUNNING,
    SUCCESSFUL: TaskResultStatus.SUCCESSFUL,
    FAILED: TaskResultStatus.FAILED,
    CANCELLED: TaskResultStatus.FAILED,  # Django has no CANCELLED
}
CANCELLED_ERROR = "taskpool.errors.Cancelled"
DISCOVER = ("tasks", "django_tasks")  # app submodules imported before looking for Django tasks


class TaskpoolBackend(BaseTaskBackend):
    """Runs Django tasks in taskpool's worker pool; results live in the task table.

    Honest flags: the supervisor dispatches by priority (higher first, then oldest) and
    holds tasks until ``run_after``; workers run coroutine functions; results are rows in
    the project's database, readable from any process. Needs the ``django_integration``
    app and a durable store (``TASKPOOL['STORE']`` ``django``, the default, or ``sqlite``).
    """

    supports_defer = True
    supports_priority = True
    supports_get_result = True
    supports_async_task = True

    def __init__(self, alias: str, params: dict) -> None:
        # Built at import time by @task and once per thread: no socket, no database here.
        super().__init__(alias, params)

    def check(self, **kwargs: Any) -> list:
        from django.apps import apps
        from django.core import checks

        from .conf import raw_settings

        problems = list(super().check(**kwargs))
        if not apps.is_installed("django_integration"):
            problems.append(checks.Error(
                f"the {self.alias!r} task backend (TaskpoolBackend) needs the django_integration app",
                hint="Add 'django_integration' to INSTALLED_APPS.", obj=self, id="taskpool.E010"))
        raw = raw_settings()
        if isinstance(raw, dict) and raw.get("STORE") == "memory":
            problems.append(checks.Error(
                "TaskpoolBackend cannot keep results in the memory store",
                hint="Leave TASKPOOL['STORE'] unset (the django store) or set it to 'sqlite'.", obj=self,
                id="taskpool.E011"))
        return problems

    # -- enqueue ---------------------------------------------------------------

    def enqueue(self, task: Task, args: Sequence, kwargs: dict) -> TaskResult:
        """Store the task's row (in the caller's transaction) and tell the supervisor on
        commit; returns a READY result whose id is the taskpool task id. In immediate mode
        the task runs here first and the finished result is returned."""
        self.validate_task(task)
        probe = TaskResult(  # normalize_json: TypeError("Unsupported type ...") for bad arguments
            task=task, id="", status=TaskResultStatus.READY, enqueued_at=None, started_at=None,
            finished_at=None, last_attempted_at=None, args=args, kwargs=kwargs, backend=self.alias,
            errors=[], worker_ids=[],
        )
        entry = entry_for(task).using(priority=int(task.priority), queue_name=task.queue_name,
                                      run_after=_epoch(task.run_after))
        store = _Recording(self._store(), lambda rows: self._announce(rows[0], task))
        client.submit_many([(entry, probe.args, probe.kwargs)], store=store)
        return _result(store.rows[0], task, self.alias)  # in immediate mode, the row as the run left it

    def _announce(self, row: TaskRow, task: Task) -> None:
        """``task_enqueued``, once the row is written (in the caller's transaction, if any) and
        before the supervisor is told or an inline run starts, so it always precedes ``task_started``."""
        task_enqueued.send(type(self), task_result=_result(row, task, self.alias))

    def _store(self) -> Store:
        store = client.default_store()
        if not store.durable:
            raise ImproperlyConfigured(
                f"TaskpoolBackend needs a durable store to keep results, not {store.name!r} (see TASKPOOL['STORE'])")
        return store

    # -- results ----------------------------------------------------------------

    def get_result(self, result_id: str) -> TaskResult:
        """The task's state from its row. Unknown ids, and ids of tasks that are not
        Django tasks, raise TaskResultDoesNotExist. CANCELLED is reported as FAILED."""
        row = self._store().fetch(str(result_id))
        if row is None:
            raise TaskResultDoesNotExist(result_id)
        return _result(row, _bind(_django_task(row.name, result_id), row, self.alias), self.alias)


class _Recording:
    """The process's store as ``submit_many`` sees it: keeps the rows it inserts (for the
    exact id and enqueue time) and calls ``inserted`` right after, before the supervisor
    is notified or an inline run starts."""

    def __init__(self, store: Store, inserted: Callable[[Sequence[TaskRow]], None] | None = None) -> None:
        self._store = store
        self._inserted = inserted
        self.rows: list[TaskRow] = []

    def insert(self, rows: Sequence[TaskRow]) -> None:
        self._store.insert(rows)
        self.rows.extend(rows)
        if self._inserted is not None:
            self._inserted(rows)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


# -- rows <-> Django objects ---------------------------------------------------------


def _when(epoch: float | None) -> dt.datetime | None:
    if epoch is None:
        return None
    moment = dt.datetime.fromtimestamp(epoch, tz=dt.UTC)
    return moment if settings.USE_TZ else timezone.make_naive(moment, timezone.get_default_timezone())


def _epoch(moment: dt.datetime | None) -> float | None:
    if moment is None:
        return None
    if timezone.is_naive(moment):  # only possible with USE_TZ = False: the default time zone's wall clock
        moment = timezone.make_aware(moment, timezone.get_default_timezone())
    return moment.timestamp()


def _task_error(error: dict) -> TaskError:
    kind = error.get("type") or "builtins.Exception"
    text = error.get("traceback") or f"{kind}: {error.get('message', '')}\n"
    return TaskError(exception_class_path=kind, traceback=text)


def _errors(row: TaskRow) -> list[TaskError]:
    errors = [_task_error(e) for e in row.errors]
    if row.status == CANCELLED and not any(e.exception_class_path == CANCELLED_ERROR for e in errors):
        errors.append(TaskError(exception_class_path=CANCELLED_ERROR,
                                traceback=f"{CANCELLED_ERROR}: the task was cancelled before it ran\n"))
    return errors


def _result(row: TaskRow, task: Task, alias: str) -> TaskResult:
    status = STATUS.get(row.status, TaskResultStatus.FAILED)
    result = TaskResult(
        task=task, id=row.task_id, status=status, enqueued_at=_when(row.enqueued_at),
        started_at=_when(row.started_at), finished_at=_when(row.finished_at),
        last_attempted_at=_when(row.last_attempted_at), args=row.args, kwargs=row.kwargs, backend=alias,
        errors=_errors(row), worker_ids=[str(w) for w in row.worker_ids],
    )
    if status == TaskResultStatus.SUCCESSFUL:
        object.__setattr__(result, "_return_value", row.result)
    return result


def _bind(task: Task, row: TaskRow, alias: str) -> Task:
    """The Task as this row was enqueued: its priority, queue, run_after and backend."""
    return dataclasses.replace(task, priority=row.priority, queue_name=row.queue, run_after=_when(row.run_after),
                               backend=alias)


def _django_task(name: str, result_id: Any) -> Task:
    """The Django Task a row names: the one registered here, else the module attribute
    (the row was written by this project's code; the import is checked to be a Task)."""
    entry = default_registry.get(name)
    found = getattr(entry.func, "django_task", None) if entry is not None else None
    if found is None:
        try:
            found = import_string(name)
        except ImportError:
            found = None
    if not isinstance(found, Task):
        raise TaskResultDoesNotExist(f"{result_id} is a taskpool task ({name}), not a Django task")
    return found


# -- running Django tasks in taskpool ------------------------------------------------


def entry_for(task: Task) -> PoolTask:
    """The taskpool registry entry that runs ``task`` (named by its module path),
    registered in this process on first use."""
    name = task.module_path
    entry = default_registry.get(name)
    known = getattr(entry.func, "django_task", None) if entry is not None else None
    if known is not None and known.func is task.func:
        return entry
    django_task = _canonical(task)

    def run(*args: Any, **kwargs: Any) -> Any:
        return run_django_task(django_task, list(args), kwargs)

    run.django_task = django_task  # type: ignore[attr-defined]
    run.__name__ = run.__qualname__ = task.name
    run.__doc__ = task.func.__doc__
    return default_registry.register(PoolTask(run, name, TaskOptions()))


def _canonical(task: Task) -> Task:
    """The module-level Task object (what ``module_path`` imports), not a ``using()`` copy."""
    try:
        found = import_string(task.module_path)
    except ImportError:
        return task
    return found if isinstance(found, Task) and found.func is task.func else task


def _worker_id() -> str:
    return str(os.getpid())  # the id taskpool records for the attempt (the worker's pid)


def _attempt_result(task: Task, args: list, kwargs: dict) -> TaskResult:
    """This attempt's TaskResult, RUNNING: from the row the task is being run for (in
    immediate mode the very row being written; in a worker the stored row, which may lag
    the supervisor by a moment) plus what the worker knows for sure: id, attempt, pid."""
    current = worker._current
    row: TaskRow | None = getattr(current, "row", None)  # immediate mode's stand-in holds the row
    task_id = getattr(current, "task_id", None) or (row.task_id if row is not None else "")
    if row is None and task_id:
        try:
            row = client.default_store().fetch(task_id)
        except StoreError:
            log.exception("taskpool: could not read task %s; running it without its stored details", task_id)
    attempt = getattr(current, "attempt", None) or (row.attempts if row is not None else 0) or 1
    now = timezone.now()
    prior = [str(w) for w in (row.worker_ids if row is not None else [])][: attempt - 1]
    prior += ["unknown"] * (attempt - 1 - len(prior))
    if row is None:
        return TaskResult(
            task=task, id=task_id, status=TaskResultStatus.RUNNING, enqueued_at=None, started_at=now,
            finished_at=None, last_attempted_at=now, args=args, kwargs=kwargs, backend=task.backend, errors=[],
            worker_ids=[*prior, _worker_id()],
        )
    this_attempt = row.status == RUNNING and row.attempts == attempt and row.last_attempted_at is not None
    last = _when(row.last_attempted_at) if this_attempt else now
    started = _when(row.started_at) if row.started_at is not None else last
    return TaskResult(
        task=_bind(task, row, task.backend), id=task_id, status=TaskResultStatus.RUNNING,
        enqueued_at=_when(row.enqueued_at), started_at=min(started, last), finished_at=None, last_attempted_at=last,
        args=args, kwargs=kwargs, backend=task.backend, errors=[_task_error(e) for e in row.errors],
        worker_ids=[*prior, _worker_id()],
    )


def run_django_task(task: Task, args: list, kwargs: dict) -> Any:
    """One attempt of a Django task, as taskpool runs it (in a worker, or inline).

    Sends ``task_started`` (status RUNNING, this worker's id appended, so
    ``context.attempt`` is the attempt number), calls the task (``task.call`` runs
    coroutine functions), normalizes the return value with ``normalize_json`` (a value it
    cannot take fails the task with TypeError, as in ImmediateBackend) and sends
    ``task_finished`` - for a failure inside the ``except`` block, so the ``django.tasks``
    logger records the traceback - then re-raises, so taskpool records the attempt FAILED
    with the exception's type and traceback.

    Every exception fails the task, SystemExit and KeyboardInterrupt included. They are
    recorded under their own names (through ``taskpool.worker.RecordedFailure``) rather
    than ending the worker: a worker ignores SIGINT, so a KeyboardInterrupt there is the
    task's own doing, and a task that killed its worker would be retried as a lost worker.
    In immediate mode a Ctrl-C during a task is recorded the same way (unlike Django's
    ImmediateBackend, which lets it propagate), so the row never stays RUNNING.
    """
    result = _attempt_result(task, args, kwargs)
    task = result.task
    sender = type(task.get_backend())
    task_started.send(sender=sender, task_result=result)
    try:
        if task.takes_context:
            value = task.call(TaskContext(task_result=result), *args, **kwargs)
        else:
            value = task.call(*args, **kwargs)
        value = normalize_json(value)
        check_json_compatible(value, "the return value")  # what taskpool can store (64-bit ints, str keys)
    except BaseException as exc:
        kind = type(exc)
        object.__setattr__(result, "finished_at", timezone.now())
        object.__setattr__(result, "status", TaskResultStatus.FAILED)
        result.errors.append(TaskError(exception_class_path=f"{kind.__module__}.{kind.__qualname__}",
                                       traceback="".join(traceback.format_exception(exc))))
        task_finished.send(sender=sender, task_result=result)
        if isinstance(exc, Exception):
            raise
        raise worker.RecordedFailure(worker.error_of(exc)) from None
    object.__setattr__(result, "_return_value", value)
    object.__setattr__(result, "finished_at", timezone.now())
    object.__setattr__(result, "status", TaskResultStatus.SUCCESSFUL)
    task_finished.send(sender=sender, task_result=result)
    return value


def _uses_taskpool(task: Task) -> bool:
    try:
        backend = task_backends[task.backend]
    except Exception:  # an alias that is not configured (InvalidTaskBackend) or cannot be built
        return False
    return isinstance(backend, TaskpoolBackend)


def register_tasks() -> list[str]:
    """Register every Django task bound to a TaskpoolBackend alias, as a taskpool task named
    by its module path; returns the names. Called in each Django-mode worker after
    ``django.setup()``.

    Imports each installed app's ``tasks`` and ``django_tasks`` modules and the modules in
    ``TASKPOOL['IMPORT']``, then looks for Task objects in the imported modules of those
    apps and modules. Nothing is imported by a name that came from a client."""
    from django.apps import apps
    from django.utils.module_loading import autodiscover_modules

    from .conf import explicit_values

    autodiscover_modules(*DISCOVER)
    imports = explicit_values().get("import_") or ()
    imports = (imports,) if isinstance(imports, str) else tuple(imports)
    for module in imports:
        importlib.import_module(module)
    roots = {app.name for app in apps.get_app_configs()} | set(imports)
    found: dict[str, Task] = {}
    for module_name, module in list(sys.modules.items()):
        if module is None or not any(module_name == r or module_name.startswith(r + ".") for r in roots):
            continue
        for value in list(getattr(module, "__dict__", {}).values()):
            if isinstance(value, Task) and value.module_path not in found and _uses_taskpool(value):
                found[value.module_path] = value
    for value in found.values():
        entry_for(value)
    return sorted(found)
