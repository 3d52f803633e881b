"""The task side of the supervisor: what is accepted, what runs next, what each outcome means.

The scheduler owns the ledger, the ready queue and the delay heap, and makes every
decision about a task: accept or refuse a Submit, adopt rows from the store, which
task is next, and what a success, an exception, a timeout, a worker's death, a
cancel or a stop does to it (retry with backoff, fail, requeue). It never touches a
process or a socket: the supervisor asks it and acts on the answer (kill a worker,
reply to a client). Both run in the supervisor's single loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from .ledger import Ledger, TaskState, error_dict
from .protocol import (
    MAX_QUERY_MANY,
    READY,
    RUNNING,
    Accepted,
    Done,
    Error,
    Message,
    Submit,
    TaskInfos,
    encode,
    encode_chunks,
)
from .queue import DelayHeap, ReadyQueue
from .registry import MAX_PRIORITY, MIN_PRIORITY, backoff_delay
from .stores.base import TaskRow

log = logging.getLogger("taskpool.supervisor")

MAX_ID_LENGTH = 200


class Scheduler:
    def __init__(self, keep_finished: int, max_ready: int, durable: bool) -> None:
        self.ledger = Ledger(keep_finished)
        self.ready = ReadyQueue()
        self.delayed = DelayHeap()
        self.max_ready = max_ready
        self.durable = durable  # rows live in a store: work beyond max_ready can wait there
        self.accepting = True  # False once the supervisor stops
        self._task_defaults: dict[str, dict] = {}
        self.backlog_in_store = False  # the store may hold READY rows we left there
        self.timeouts = 0
        self.wall_now: float | None = None  # wall clock read with the loop pass's ``now`` (a later read runs delays early)
        self.promised: Callable[[], int] = lambda: 0  # room a pull under way may fill (set by the supervisor)

    @property
    def task_defaults(self) -> dict[str, dict]:
        """Registered tasks and their options, from the current generation's Ready frames."""
        return self._task_defaults

    @task_defaults.setter
    def task_defaults(self, tasks: dict[str, dict]) -> None:
        self._task_defaults = tasks
        self.ledger.names = {name: name for name in tasks}

    # -- intake --------------------------------------------------------------

    def submit(self, msg: Submit, now: float) -> Message:
        """Accept a task, or say why not. With a durable store a row the client already
        stored is never lost: beyond the limits it waits in the store for a sweep."""
        if self.ledger.get(msg.task_id) is not None:  # re-sent, or adopted from the store first
            return self._unknown(msg) or Accepted(msg.task_id)
        problem = self._check(msg)
        if problem is None:
            self.enqueue(self.ledger.accept(msg, self.task_defaults.get(msg.name), self.wall_now), now)
            return Accepted(msg.task_id)
        if not msg.stored or not self.durable:
            return problem
        if problem.code in ("queue_full", "shutting_down"):
            self.backlog_in_store = True
            return Accepted(msg.task_id)
        if problem.code in ("unknown_task", "invalid_arguments") and len(msg.task_id) <= MAX_ID_LENGTH:
            kind = "UnknownTask" if problem.code == "unknown_task" else "InvalidArguments"
            task = self.ledger.accept(msg, None)  # the row exists: record why it will never run
            self.ledger.fail(task, error_dict(f"taskpool.errors.{kind}", problem.message))
        return problem

    def _check(self, msg: Submit) -> Error | None:
        """Why ``msg`` cannot be accepted, or None. Plain tests first: this runs for every submit."""
        if (self.accepting and 0 < len(msg.task_id) <= MAX_ID_LENGTH and 0 < len(msg.name) <= MAX_ID_LENGTH
                and msg.priority is None and msg.max_attempts is None and msg.timeout is None
                and (not self._task_defaults or msg.name in self._task_defaults)
                and len(self.ready) + len(self.delayed) + self.promised() < self.max_ready):
            return None  # the common case: no options, a registered name, room in the queue
        return self._problem(msg)

    def _problem(self, msg: Submit) -> Error | None:
        def refuse(code: str, text: str) -> Error:
            return Error(code, text, msg.task_id)

        if not self.accepting:
            return refuse("shutting_down", "the supervisor is stopping")
        if not 0 < len(msg.task_id) <= MAX_ID_LENGTH or not 0 < len(msg.name) <= MAX_ID_LENGTH:
            return refuse("invalid_arguments", f"task id and name must be 1 to {MAX_ID_LENGTH} characters")
        unknown = self._unknown(msg)
        if unknown is not None:
            return unknown
        if msg.priority is not None and not MIN_PRIORITY <= msg.priority <= MAX_PRIORITY:
            return refuse("invalid_arguments", f"priority must be in {MIN_PRIORITY}..{MAX_PRIORITY}")
        if msg.max_attempts is not None and msg.max_attempts < 1:
            return refuse("invalid_arguments", "max_attempts must be at least 1")
        if msg.timeout is not None and msg.timeout <= 0:
            return refuse("invalid_arguments", "timeout must be greater than 0")
        if self.queued() + self.promised() >= self.max_ready:
            return refuse("queue_full", f"{self.max_ready} tasks are already waiting (max_ready)")
        return None

    def _unknown(self, msg: Submit) -> Error | None:
        if self.task_defaults and msg.name not in self.task_defaults:
            return Error("unknown_task", f"no task named {msg.name!r} is registered in the workers", msg.task_id)
        return None

    def adopt(self, rows: list[dict], now: float) -> int:
        """Take READY rows the recorder claimed from the store; returns how many were new."""
        adopted = 0
        for fields in rows:
            row = TaskRow(**fields)
            if self.ledger.get(row.task_id) is None:
                if row.timeout is None:
                    row.timeout = self.task_defaults.get(row.name, {}).get("timeout")
                task = self.ledger.adopt(row)
                adopted += 1
                if self.task_defaults and row.name not in self.task_defaults:  # never run it
                    message = f"no task named {row.name!r} is registered in the workers"
                    self.ledger.fail(task, error_dict("taskpool.errors.UnknownTask", message))
                    continue
                self.enqueue(task, now)
        return adopted

    def infos(self, task_ids: list, max_frame: int) -> Message | bytes:
        """The answer to QueryMany: an encoded TaskInfos frame, cut short to fit a frame."""
        if len(task_ids) > MAX_QUERY_MANY or any(type(t) is not str for t in task_ids):
            return Error("invalid_arguments", f"QueryMany takes at most {MAX_QUERY_MANY} task ids, all strings")
        get = self.ledger.get
        entries = []
        for task_id in task_ids:
            task = get(task_id)
            entries.append(None if task is None else list(task.info_fields()))
        part, frame = encode_chunks(TaskInfos, entries, max_frame)[0]
        if len(frame) - 4 > max_frame:  # one answer alone is too big: the client asks with Query
            frame = encode(TaskInfos([None]))
        return frame

    def info(self, task_id: str) -> Message:
        task = self.ledger.get(task_id)
        if task is None:
            return Error("not_found", f"no task {task_id!r} is known to this supervisor", task_id)
        return task.info()

    # -- the queue -----------------------------------------------------------

    def enqueue(self, task: TaskState, now: float) -> None:
        wall = self.wall_now if self.wall_now is not None else time.time()
        delay = (task.run_after - wall) if task.run_after else 0.0
        if delay > 0:
            self.delayed.push(task.task_id, now + delay)
        else:
            self.ready.push(task.task_id, task.priority)

    def promote_due(self, now: float) -> None:
        for task_id in self.delayed.pop_due(now):
            task = self.ledger.active.get(task_id)
            if task is not None and task.status == READY:
                self.ready.push(task_id, task.priority)

    def peek_ready(self) -> TaskState | None:
        """The task ``next_ready`` would return, left in the queue."""
        task_id = self.ready.peek()
        return None if task_id is None else self.ledger.active[task_id]

    def next_ready(self) -> TaskState | None:
        task_id = self.ready.pop()
        return None if task_id is None else self.ledger.active[task_id]

    def queued(self) -> int:
        return len(self.ready) + len(self.delayed)

    def room(self) -> int:
        return self.max_ready - self.queued() - self.promised()

    # -- outcomes ------------------------------------------------------------

    def start(self, task: TaskState, worker_pid: int) -> None:
        self.ledger.start(task, worker_pid)

    def done(self, task_id: str, msg: Done, now: float) -> None:
        task = self.ledger.active.get(task_id)
        if task is None:
            return
        if msg.ok:
            self.ledger.succeed(task, msg.result)
            return
        error = msg.error or error_dict("builtins.Exception", "task failed")
        if msg.retry_in is not None:
            self._retry_or_fail(task, error, msg.retry_in, now)
        else:
            self.ledger.fail(task, error)

    def lost(self, task_id: str, worker_pid: int, how: str, now: float) -> None:
        """The worker running ``task_id`` died: not the task's fault, so it is re-run."""
        task = self.ledger.active.get(task_id)
        if task is None or task.status != RUNNING:
            return
        error = error_dict("taskpool.errors.WorkerLost", f"worker pid {worker_pid} {how} while running the task")
        if not self.accepting:
            self.interrupt(task_id, error["message"], now)
        elif task.attempts < task.max_attempts:
            self.ledger.retry(task, error)
            self.enqueue(task, now)
        else:
            self.ledger.fail(task, error)

    def timed_out(self, task_id: str, worker_pid: int, now: float) -> None:
        task = self.ledger.active.get(task_id)
        if task is None:  # cancelled meanwhile: its worker was only being stopped
            return
        self.timeouts += 1
        log.warning("task %s (%s) passed its %ss timeout; killed worker %d", task.task_id, task.name, task.timeout, worker_pid)
        message = f"task {task.name} ran longer than its timeout of {task.timeout}s; its worker was killed"
        error = error_dict("taskpool.errors.TaskTimeout", message)
        opts = self.task_defaults.get(task.name, {})
        if opts.get("retry_on_timeout"):
            self._retry_or_fail(task, error, backoff_delay(task.attempts, opts["retry_backoff"], opts["retry_backoff_max"]), now)
        else:
            self.ledger.fail(task, error)

    def _retry_or_fail(self, task: TaskState, error: dict, delay: float, now: float) -> None:
        if task.attempts < task.max_attempts:  # while stopping too: the store keeps it for the next start
            self.ledger.retry(task, error, run_after=time.time() + delay if delay > 0 else None)
            self.enqueue(task, now)
        else:
            self.ledger.fail(task, error)

    def take_back(self, task_id: str, now: float) -> None:
        """A task sent ahead to a worker that went away before starting it: READY all along,
        no attempt spent, so it simply queues again (cancelled ones stay cancelled)."""
        task = self.ledger.active.get(task_id)
        if task is not None and task.status == READY:
            self.enqueue(task, now)

    def interrupt(self, task_id: str, why: str, now: float) -> None:
        """Stopped by the supervisor (not the task's fault): READY again, attempt given back."""
        task = self.ledger.active.get(task_id)
        if task is not None and task.status == RUNNING:
            self.ledger.interrupt(task, why)
            self.enqueue(task, now)

    def cancel(self, task_id: str) -> tuple[Message, bool]:
        """Cancel a task; the flag says it was running (its worker must be stopped)."""
        task = self.ledger.get(task_id)
        if task is None:
            return self.info(task_id), False
        was_running = task.status == RUNNING
        if task.status == READY:
            self.ready.discard(task_id)
            self.delayed.discard(task_id)
            self.ledger.cancel(task)
        elif was_running:
            self.ledger.cancel(task, error_dict("taskpool.errors.Cancelled", "cancelled while running; its worker was stopped"))
        return task.info(), was_running
