"""The supervisor's side of each worker's life after the fork: its frames (``Ready``,
``Progress``, ``Done``, a boot error) and its death (the task it ran, the tasks sent ahead
to it, a crash counted, a boot that failed).

Kept apart from the loop (supervisor.py), which owns the sockets and the order of a pass;
this owns what a worker's news means for the tasks and for the pool.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from .children import WorkerProc, WorkerState, describe_exit
from .config import Config
from .dispatch import Dispatcher
from .errors import ProtocolError
from .pool import WorkerPool
from .protocol import Done, Error, Message, Progress, Ready
from .scheduler import Scheduler
from .transport import Closed

log = logging.getLogger("taskpool.supervisor")

BOOT_FAILURE_EXIT = 3
LAST_READS = 64  # reads of a dead worker's socket at most (256 KiB each)


class SupervisorExit(Exception):
    """Raised inside the loop to stop with an exit code and a message."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class WorkerEvents:
    def __init__(self, config: Config, scheduler: Scheduler, workers: WorkerPool, dispatcher: Dispatcher,
                 counters: dict[str, int], running: Callable[[], bool]) -> None:
        self.config = config  # replaced by the supervisor on reload
        self.scheduler = scheduler
        self.workers = workers
        self.dispatcher = dispatcher
        self.counters = counters
        self.running = running  # the supervisor is in its running phase (not stopping)

    # -- frames ------------------------------------------------------------------

    def read(self, worker: WorkerProc, now: float) -> None:
        """Handle what the worker's channel holds; a bad frame gets the worker killed."""
        try:
            for msg in worker.conn.read():
                self.handle(worker, msg, now)
        except Closed:
            self.workers.disconnect(worker)  # its death is handled when it is reaped
        except ProtocolError as exc:
            log.error("worker %d sent a bad frame (%s); killing it", worker.pid, exc)
            self.workers.kill(worker)

    def handle(self, worker: WorkerProc, msg: Message, now: float) -> None:
        if isinstance(msg, Done):
            self._on_done(worker, msg, now)
        elif isinstance(msg, Progress):
            task = self.scheduler.ledger.active.get(msg.task_id)
            if task is not None and worker.task_id == msg.task_id:
                self.scheduler.ledger.report_progress(task, min(max(msg.percent, 0.0), 100.0), msg.message)
        elif isinstance(msg, Ready):
            self._on_ready(worker, msg, now)
        elif isinstance(msg, Error) and msg.code == "boot_failed":
            worker.boot_error = msg.message
        else:
            raise ProtocolError(f"unexpected {type(msg).__name__} from a worker")

    def _on_ready(self, worker: WorkerProc, msg: Ready, now: float) -> None:
        if worker.state != WorkerState.BOOTING:
            return
        if worker.generation == self.workers.generation:
            self.scheduler.task_defaults = msg.tasks
        self.workers.mark_ready(worker, sorted(msg.tasks), now, self.config.graceful_timeout)

    def _on_done(self, worker: WorkerProc, msg: Done, now: float) -> None:
        if worker.task_id != msg.task_id:
            return  # a task we already gave up on (cancelled)
        self.scheduler.done(msg.task_id, msg, now)  # first: a client waiting for it is answered at once
        worker.task_id = None
        worker.deadline = None
        worker.tasks_done += 1
        worker.state = WorkerState.IDLE
        self.dispatcher.note_duration(worker.running_name, max(0.0, now - worker.running_since))
        if worker.queued:
            self.dispatcher.next_queued(worker, now)
        if self._should_retire(worker, msg.rss):
            self.workers.retire(worker, now, self.config.graceful_timeout)  # a busy one finishes its queue first

    def _should_retire(self, worker: WorkerProc, rss: int) -> bool:
        limit_tasks, limit_mb = self.config.max_tasks_per_worker, self.config.max_memory_per_worker
        if worker.retire_after_task or not self.running():
            return True
        if worker.generation != self.workers.generation and self.workers.previous_generation is None:
            return True  # an old worker left over from a completed reload
        if limit_tasks and worker.tasks_done >= limit_tasks:
            log.info("worker %d did %d tasks; recycling it", worker.pid, worker.tasks_done)
            return True
        if limit_mb and rss > limit_mb * 1024 * 1024:
            log.info("worker %d uses %d MB; recycling it", worker.pid, rss // 2**20)
            return True
        return False

    # -- death -------------------------------------------------------------------

    def exited(self, worker: WorkerProc, status: int, now: float) -> None:
        """A reaped worker: its running task lost (retried or failed), its tasks sent ahead
        back to the queue unspent; raises SupervisorExit when no worker could ever boot.

        First, what it wrote before it died is read: the SIGCHLD can be handled in the same
        loop pass as the frames, before them (a Done would be lost, and its finished task run
        again; a boot error's reason lost)."""
        how = describe_exit(status)
        expected = worker.state in (WorkerState.RETIRING, WorkerState.KILLED)
        self._read_last_frames(worker, now)
        self.workers.disconnect(worker)
        if worker.task_id is not None:
            self.scheduler.lost(worker.task_id, worker.pid, how, now)
            worker.task_id = None
        while worker.queued:
            self.scheduler.take_back(worker.queued.popleft(), now)
        if worker.state == WorkerState.BOOTING:
            self._boot_failed(worker, how, now)
        elif not expected:
            log.warning("worker %d (pid %d) %s", worker.wid, worker.pid, how)
            self.counters["worker_crashes"] += 1
            self.workers.note_crash(worker, now)
        if self.running():
            self.counters["worker_restarts"] += 1

    def _read_last_frames(self, worker: WorkerProc, now: float) -> None:
        """Handle every whole frame a dead worker left in its socket, up to its EOF (a task's
        own child may hold the socket open: then what is there now, at most LAST_READS reads)."""
        for _ in range(LAST_READS):
            if worker.conn is None:  # its EOF was reached (read() disconnects it then)
                return
            self.read(worker, now)

    def _boot_failed(self, worker: WorkerProc, how: str, now: float) -> None:
        reason = worker.boot_error or f"worker {how} before it was ready"
        if self.workers.reloading(worker):
            self.workers.abort_reload(reason)
            return
        if not self.workers.serving() or not self.workers.ever_ready:
            raise SupervisorExit(BOOT_FAILURE_EXIT, f"cannot start workers: {reason}")
        log.error("a replacement worker failed to boot: %s", reason)
        self.workers.note_crash(worker, now)
