"""Which ready task goes to which worker, and when.

One task to each idle worker, highest priority first; then, when every worker is busy and
tasks still wait, quick tasks sent ahead to busy workers (``--prefetch``), so that a worker
finishing a tiny task starts the next one without waiting for the supervisor's loop. A task
is quick when runs of its name have averaged under ``--prefetch-below``: the dispatcher
keeps that average per registered name, from a task's start to its ``Done``. The
supervisor calls ``dispatch`` once per loop pass while it is running, ``note_duration`` and
``next_queued`` when a worker's ``Done`` arrives, and ``send`` for any frame to a worker.
"""

from __future__ import annotations

from collections.abc import Callable

from .children import WorkerProc, WorkerState
from .config import Config
from .errors import ProtocolError
from .ledger import TaskState
from .pool import WorkerPool
from .protocol import READY, Message, Run, encode, encode_fields
from .scheduler import Scheduler
from .transport import Closed, FramedConnection

SKIP_GRACE = 0.5  # seconds a worker has to skip a cancelled task sent ahead before it is stopped
DURATION_WEIGHT = 0.2  # weight of the newest run in a task name's average duration


class Dispatcher:
    def __init__(self, config: Config, scheduler: Scheduler, workers: WorkerPool,
                 mark_work: Callable[[FramedConnection], None]) -> None:
        self.config = config  # replaced by the supervisor on reload
        self.scheduler = scheduler
        self.workers = workers
        self._mark_work = mark_work
        self.durations: dict[str, float] = {}  # task name -> moving average of its runs, seconds

    def dispatch(self, now: float) -> None:
        if not self.scheduler.ready:
            return
        for worker in self.workers.idle():
            task = self.scheduler.next_ready()
            if task is None:
                return
            self._begin(worker, task, now)
            self._send_run(worker, task, task.attempts)
        if self.config.prefetch and self.scheduler.ready:
            self._prefetch(now)

    def note_duration(self, name: str, seconds: float) -> None:
        if name in self.scheduler.ledger.names:  # registered names only: the table stays bounded
            average = self.durations.get(name)
            self.durations[name] = seconds if average is None else average + DURATION_WEIGHT * (seconds - average)

    def quick(self, name: str) -> bool:
        """Has ``name`` run, on average, for less than ``prefetch_below``?"""
        average = self.durations.get(name)
        return average is not None and average < self.config.prefetch_below

    def _prefetch(self, now: float) -> None:
        """Every worker is busy and tasks wait: send each busy worker up to ``prefetch``
        more, so it starts the next one the moment it finishes instead of waiting for
        the loop to answer its Done. They stay READY (no attempt spent) until started.

        Only quick tasks go ahead (their name averages under ``prefetch_below``), and only to
        a worker whose current task is quick and young: a long task never holds others
        back, and one sent ahead waits a few milliseconds at most behind its worker. The
        queue's order holds: a task that may not go ahead stops the sending."""
        limit, max_tasks, below = self.config.prefetch, self.config.max_tasks_per_worker, self.config.prefetch_below
        gated = below != float("inf")
        for worker in self.workers.prefetchable(limit):
            if gated and not (self.quick(worker.running_name) and now - worker.running_since < below):
                continue
            while len(worker.queued) < limit:
                if max_tasks and worker.tasks_done + 1 + len(worker.queued) >= max_tasks:
                    break
                head = self.scheduler.peek_ready()
                if head is None or (gated and not self.quick(head.name)):
                    return
                task = self.scheduler.next_ready()
                assert task is head
                worker.queued.append(task.task_id)
                if not self._send_run(worker, task, task.attempts + 1):
                    break

    def next_queued(self, worker: WorkerProc, now: float) -> None:
        """The worker has just started the task it was sent ahead: account for it. If that
        task was cancelled meanwhile, the worker was sent a Cancel and answers with a Done
        without running it; should it have started it already (the Cancel came too late),
        it is stopped like any running task that is cancelled, after ``SKIP_GRACE``."""
        task_id = worker.queued.popleft()
        task = self.scheduler.ledger.active.get(task_id)
        if task is None or task.status != READY:
            worker.state, worker.task_id, worker.deadline = WorkerState.BUSY, task_id, now + SKIP_GRACE
            worker.running_name, worker.running_since = "", now  # a skip: no duration to learn from
            return
        self._begin(worker, task, now)

    def _begin(self, worker: WorkerProc, task: TaskState, now: float) -> None:
        self.scheduler.start(task, worker.pid)
        worker.state = WorkerState.BUSY
        worker.task_id = task.task_id
        worker.deadline = now + task.timeout if task.timeout else None
        worker.running_name, worker.running_since = task.name, now

    def _send_run(self, worker: WorkerProc, task: TaskState, attempt: int) -> bool:
        return self._send_frame(worker, encode_fields(Run, task.task_id, task.name, task.args, task.kwargs, attempt))

    def send(self, worker: WorkerProc, msg: Message) -> bool:
        """Queue a frame for a worker (written at the end of the loop pass); a worker that
        is gone or does not read is killed, its tasks dealt with when it is reaped."""
        return self._send_frame(worker, encode(msg))

    def _send_frame(self, worker: WorkerProc, frame: bytes) -> bool:
        if worker.conn is None:
            return False
        try:
            worker.conn.send_bytes(frame)
        except (Closed, ProtocolError):
            self.workers.kill(worker)
            return False
        self._mark_work(worker.conn)
        return True
