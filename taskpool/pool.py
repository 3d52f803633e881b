"""The worker table: generations, the target count, retiring, killing and respawn backoff.

Owned by the supervisor's loop, which asks it to ``manage`` the table once a pass
and tells it what the workers said. Reload works by generation, as gunicorn's does:
``begin_reload`` bumps the generation, ``manage`` forks the new one, and each new
worker that reports Ready retires one old worker (idle ones first, busy ones after
their task). If the new generation cannot boot, ``abort_reload`` kills it and the
old one keeps serving. Tasks are not this module's business: the supervisor reads
``worker.task_id`` before it lets a worker go.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator

from .children import WorkerProc, WorkerState, kill
from .transport import FramedConnection

log = logging.getLogger("taskpool.supervisor")

SPAWN_RETRY = 1.0  # seconds before forking again after fork itself failed

RESPAWN_BACKOFF = (0.0, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0)
CRASH_WINDOW = 5.0  # a worker dying sooner than this after it started counts toward backoff

Spawner = Callable[[int, int, float], WorkerProc]  # (wid, generation, now) -> a forked worker


class WorkerPool:
    def __init__(self, target: int, spawner: Spawner, release: Callable[[FramedConnection], None]) -> None:
        self.target = target
        self._spawner = spawner
        self._release = release  # unregister and close a worker's channel
        self.table: dict[int, WorkerProc] = {}
        self.generation = 1
        self.previous_generation: int | None = None  # set while a reload is in progress
        self.crash_streak = 0
        self.next_spawn_at = 0.0
        self.ever_ready = False

    def __iter__(self) -> Iterator[WorkerProc]:
        return iter(list(self.table.values()))

    def __len__(self) -> int:
        return len(self.table)

    # -- size ----------------------------------------------------------------

    def manage(self, now: float, grace: float) -> None:
        """Fork or retire workers of the current generation to match the target."""
        current = [w for w in self.table.values() if w.generation == self.generation and w.serving]
        if len(current) > self.target:
            excess = sorted(current, key=lambda w: (w.state != WorkerState.IDLE, w.started))
            for worker in excess[: len(current) - self.target]:
                self.retire(worker, now, grace)
        elif len(current) < self.target and now >= self.next_spawn_at:
            used = {w.wid for w in current}
            free = (wid for wid in itertools.count(1) if wid not in used)
            for wid in itertools.islice(free, self.target - len(current)):
                try:
                    worker = self._spawner(wid, self.generation, now)
                except OSError as exc:  # out of descriptors or processes: try again shortly
                    log.error("cannot fork worker %d: %s; trying again in %.0fs", wid, exc, SPAWN_RETRY)
                    self.next_spawn_at = now + SPAWN_RETRY
                    return
                self.table[worker.pid] = worker

    def idle(self) -> Iterator[WorkerProc]:
        """Workers that may take a task now."""
        for worker in self.table.values():
            if worker.state == WorkerState.IDLE and not worker.retire_after_task and worker.conn is not None:
                yield worker

    def prefetchable(self, limit: int) -> Iterator[WorkerProc]:
        """Busy workers of the current generation that may be sent tasks ahead: those with at
        most half of ``limit`` left, so that tasks go out several to a write."""
        refill_at = limit // 2
        for worker in self.table.values():
            if (worker.state == WorkerState.BUSY and not worker.retire_after_task and worker.conn is not None
                    and worker.generation == self.generation and len(worker.queued) <= refill_at):
                yield worker

    def busy(self) -> int:
        return sum(1 for w in self.table.values() if w.task_id is not None)

    def serving(self) -> bool:
        return any(w.state in (WorkerState.IDLE, WorkerState.BUSY) for w in self.table.values())

    # -- endings -------------------------------------------------------------

    def retire(self, worker: WorkerProc, now: float, grace: float) -> None:
        """Let the worker finish its task, then close its channel so it exits."""
        if worker.state == WorkerState.BUSY:
            worker.retire_after_task = True
            return
        if worker.state in (WorkerState.RETIRING, WorkerState.KILLED):
            return
        worker.state = WorkerState.RETIRING
        worker.kill_at = now + max(grace, 1.0)
        self.disconnect(worker)

    def retire_all(self, now: float, grace: float) -> None:
        for worker in self:
            self.retire(worker, now, grace)

    def kill(self, worker: WorkerProc) -> None:
        worker.state = WorkerState.KILLED
        worker.kill_at = None
        worker.deadline = None
        kill(worker.pid)

    def disconnect(self, worker: WorkerProc) -> None:
        if worker.conn is not None:
            self._release(worker.conn)
            worker.conn = None

    def take(self, pid: int) -> WorkerProc | None:
        """Take an exited worker out of the table with its channel still open, so what it
        wrote before it died can be read (None if ``pid`` is not a worker)."""
        return self.table.pop(pid, None)

    def remove(self, pid: int) -> WorkerProc | None:
        """Take an exited worker out of the table (None if ``pid`` is not a worker)."""
        worker = self.table.pop(pid, None)
        if worker is not None:
            self.disconnect(worker)
        return worker

    def note_crash(self, worker: WorkerProc, now: float) -> None:
        """Delay the next fork when workers keep dying young."""
        self.crash_streak = self.crash_streak + 1 if now - worker.started < CRASH_WINDOW else 0
        delay = RESPAWN_BACKOFF[min(self.crash_streak, len(RESPAWN_BACKOFF) - 1)]
        self.next_spawn_at = now + delay
        if delay:
            log.warning("workers are dying soon after start; next fork in %.1fs", delay)

    # -- generations ---------------------------------------------------------

    def begin_reload(self) -> None:
        if self.previous_generation is None:
            self.previous_generation = self.generation
        self.generation += 1

    def abort_reload(self, reason: str) -> None:
        failed, self.generation = self.generation, self.previous_generation or self.generation
        self.previous_generation = None
        log.error("reload failed, generation %d keeps running: %s", self.generation, reason)
        for worker in self:
            if worker.generation == failed:
                self.kill(worker)

    def reloading(self, worker: WorkerProc) -> bool:
        """True when ``worker`` belongs to a generation that is still booting in a reload."""
        return self.previous_generation is not None and worker.generation == self.generation

    def mark_ready(self, worker: WorkerProc, names: list[str], now: float, grace: float) -> None:
        worker.state = WorkerState.IDLE
        worker.names = names
        self.ever_ready = True
        if worker.generation == self.generation:
            self.crash_streak = 0
        if self.reloading(worker):
            self._retire_one_old(now, grace)

    def _retire_one_old(self, now: float, grace: float) -> None:
        """One new worker is ready: one old one goes. When the whole new generation is
        ready, the rest of the old one goes too and the reload is done."""
        old = sorted(
            (w for w in self.table.values() if w.generation != self.generation and w.serving),
            key=lambda w: (w.state != WorkerState.IDLE, w.started),
        )
        ready_new = sum(1 for w in self.table.values()
                        if w.generation == self.generation and w.state in (WorkerState.IDLE, WorkerState.BUSY))
        done = ready_new >= self.target or len(old) <= 1
        for worker in old if done else old[:1]:
            self.retire(worker, now, grace)
        if done:
            self.previous_generation = None
            log.info("reload done: generation %d serving", self.generation)

    def next_deadline(self, now: float) -> float | None:
        """The nearest task deadline, kill escalation or pending fork."""
        moments = [m for w in self.table.values() for m in (w.deadline, w.kill_at) if m is not None]
        if self.next_spawn_at > now:
            moments.append(self.next_spawn_at)
        return min(moments) if moments else None
