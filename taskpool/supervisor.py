"""The supervisor: one single-threaded loop that owns the workers, the queue and the tasks.

Everything wakes one ``selectors`` wait: the listening socket, client connections,
worker channels and a signal wakeup fd. Signal handlers only append the signal
number to a list; the loop dispatches ``handle_<name>`` methods. One pass of the
loop is ``tick(events, now)``, a handful of named steps that tests may call with a
chosen clock::

    read events -> dispatch -> flush output -> handle signals -> reap children
        -> timers -> manage workers -> sync the store -> dispatch -> flush output

Data flow of a task: client ``Submit`` -> ledger.accept -> ready queue (or delay
heap) -> ``Run`` to an idle worker -> ``Progress``* / ``Done`` from the worker ->
ledger.succeed/fail -> waiting clients get ``TaskInfo``. The supervisor never
imports user code and never blocks on a database.
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from . import __version__, titles
from .children import WorkerProc, WorkerState, kill, reap, spawn
from .config import Config, load_config
from .connections import ACCEPT_PAUSE, Client, ConnectionHub
from .dispatch import Dispatcher
from .errors import ConfigError
from .health import ProcessSampler, build_stats
from .ledger import TaskState
from .locks import hold_lock
from .pool import WorkerPool
from .protocol import (
    Adopt,
    Cancel,
    Error,
    Message,
    Query,
    QueryMany,
    Stats,
    StatsRequest,
    Submit,
    TaskInfo,
    encode_fields,
)
from .recorder import RecorderSettings
from .recording import RecorderLink
from .scheduler import Scheduler
from .transport import ensure_private_dir, group_id, listen, raise_descriptor_limit
from .worker_events import BOOT_FAILURE_EXIT, SupervisorExit, WorkerEvents

TYPE_CHECKING = False  # typing stays unimported at run time (docs/performance.md, idle RSS)
if TYPE_CHECKING:
    from typing import Any

log = logging.getLogger("taskpool.supervisor")

# Timers, worker checks and the store sync run in a pass without events (its wait ended at a
# timeout), after a signal, and otherwise at most this often: a round trip's passes come tens
# of microseconds apart, and every microsecond of a pass delays the frames that arrive during
# it (docs/performance.md, W2). A timer is at most this late while frames keep coming.
HOUSEKEEPING_INTERVAL = 0.001
REAP_INTERVAL = 1.0  # children are reaped on SIGCHLD; this often anyway, should a signal be missed

MAX_WAIT = 3600.0
SWEEP_INTERVAL = 2.0  # seconds between store sweeps (adopt unheld READY rows, recover dead holders)
SWEEP_HORIZON = 60.0  # adopt delayed rows due within this many seconds
PULL_LIMIT = 500
RECORDER_DRAIN = 10.0  # seconds a stop waits for the recorder after the workers are gone
HANDLED_SIGNALS = ("HUP", "TERM", "INT", "QUIT", "TTIN", "TTOU", "USR1", "CHLD")


class Supervisor:
    def __init__(self, config: Config, explicit: dict | None = None) -> None:
        self.config = config
        self.explicit = dict(explicit or {})
        self.selector = selectors.DefaultSelector()
        self.scheduler = Scheduler(config.result_cache, config.max_ready, durable=config.store != "memory")
        self.scheduler.ledger.listen(self._on_task_event)
        self.hub = ConnectionHub(
            self.selector, config.max_frame, config.client_buffer,
            {os.getuid(), 0, *config.allow_uid}, group_id(config.socket_group), self.handle_request, config.store,
            os.path.abspath(config.spool),
        )
        self.workers = WorkerPool(config.workers, self._spawn, self.hub.unregister)
        self.supervisor_id = os.urandom(16).hex()  # uuid would import platform before the fork
        self.recorder: RecorderLink | None = None
        if config.store != "memory":
            settings = RecorderSettings(
                config.store, os.path.abspath(config.spool), self.supervisor_id,
                config.retention_days * 86400, config.max_frame, time.time(),
            )
            self.recorder = RecorderLink(
                settings, self._close_in_child, self._register_recorder, self.hub.unregister,
                self.hub.mark_dirty, self._on_adopt,
            )
            self.scheduler.promised = self.recorder.rows_promised
        self.lock_fd: int | None = None
        self.next_sweep_at = 0.0
        self.drain_deadline: float | None = None
        self.pending_signals: list[int] = []
        self.next_housekeeping_at = 0.0
        self.housekeeping_owed = False  # a pass skipped it: not all its work is a timer next_timeout knows
        self.next_reap_at = 0.0  # a waitpid() every loop pass was a syscall per pass for nothing
        self.sampler = ProcessSampler()
        self.phase = "starting"
        self.stop_deadline: float | None = None
        self.accept_resume_at: float | None = None  # the listener is paused (out of descriptors) until then
        self.exit_code = 0
        self.counters = {"worker_restarts": 0, "worker_crashes": 0}
        self.dispatcher = Dispatcher(config, self.scheduler, self.workers, self.hub.mark_work)
        self.worker_events = WorkerEvents(config, self.scheduler, self.workers, self.dispatcher, self.counters,
                                          lambda: self.phase == "running")
        self.started_wall = time.time()
        self.started_mono = time.monotonic()
        self.listener: socket.socket | None = None
        self.socket_path = config.socket_path
        self._wake_r, self._wake_w = socket.socketpair()
        for end in (self._wake_r, self._wake_w):
            end.setblocking(False)

    # -- lifecycle ---------------------------------------------------------

    def open(self) -> None:
        """Bind the socket and register the fixed event sources."""
        ensure_private_dir(os.path.abspath(self.config.spool))  # refuses a symlinked spool first
        raise_descriptor_limit()
        if self.recorder is not None:
            self.lock_fd = hold_lock(os.path.abspath(self.config.spool), self.supervisor_id)
        self.listener = listen(self.socket_path, self.config.socket_mode, self.config.socket_group)
        self._listener_ino = os.stat(self.socket_path).st_ino
        self.selector.register(self.listener, selectors.EVENT_READ, self._on_accept)
        self.selector.register(self._wake_r, selectors.EVENT_READ, self._on_wakeup)
        self.phase = "running"
        titles.set_title(f"supervisor gen {self.workers.generation} {self.socket_path}")

    def run(self) -> int:
        """Serve until stopped; returns the process exit code."""
        with self.installed_signals():
            try:
                events: list = []  # the first pass forks the workers at once
                while self.phase != "stopped":
                    try:
                        self.tick(events, time.monotonic())
                    except SupervisorExit as exc:  # stop at once, but let the recorder write
                        log.error("%s", exc)
                        self.exit_code = exc.code
                        self.stop_now(time.monotonic())
                    if self.phase != "stopped":
                        events = self.wait_for_events(bool(events))
            finally:
                self.wait_for_children()
                self.close()
        return self.exit_code

    def wait_for_events(self, busy: bool) -> list:
        """The next events. After a pass that had some, poll for ``spin`` seconds (yielding the
        CPU between polls) before sleeping: the next frame of a conversation usually comes
        within tens of microseconds, sooner than a sleeping process can be woken. The timeout
        is worked out only before sleeping: a timer due during the spin waits for its end (at
        most ``MAX_SPIN``), and a frame that comes during the spin is not kept waiting for it."""
        spin = self.config.spin
        if busy and spin > 0 and not self.hub.backlogged:
            select = self.selector.select
            deadline = time.perf_counter() + spin
            while time.perf_counter() < deadline:
                events = select(0)
                if events:
                    return events
                os.sched_yield()
        return self.selector.select(self.next_timeout(time.monotonic()))

    @contextmanager
    def installed_signals(self) -> Iterator[None]:
        """Handlers that only record; always restored on the way out."""
        previous = {}
        old_wakeup = signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        try:
            for name in HANDLED_SIGNALS:
                signum = getattr(signal, f"SIG{name}")
                previous[signum] = signal.signal(signum, self._record_signal)
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            signal.set_wakeup_fd(old_wakeup)

    def _record_signal(self, signum: int, frame: Any) -> None:
        self.pending_signals.append(signum)

    def close(self) -> None:
        """Release the socket (only if it is still ours), channels and selector."""
        if self.listener is not None:
            self.listener.close()
            try:
                if os.stat(self.socket_path).st_ino == self._listener_ino:
                    os.unlink(self.socket_path)
            except FileNotFoundError:
                pass
            self.listener = None
        self.hub.close_all()
        for worker in self.workers:
            self.workers.disconnect(worker)
        self.selector.close()
        self._wake_r.close()
        self._wake_w.close()

    def _close_in_child(self) -> None:
        """In a freshly forked worker: drop every descriptor of the supervisor's."""
        for key in list(self.selector.get_map().values()):
            fileobj = key.fileobj
            if hasattr(fileobj, "close"):
                fileobj.close()
        self.selector.close()
        self._wake_w.close()
        self._wake_r.close()

    # -- the loop ------------------------------------------------------------

    def tick(self, events: list, now: float) -> None:
        self.scheduler.wall_now = time.time()
        self.hub.resume(now)  # one more pass's worth of the requests left waiting by the last one
        for key, mask in events:
            key.data(key, mask, now)
        self.send_work(now)  # the frames the events called for go out before the housekeeping
        signalled = self.handle_signals(now)
        self.reap_children(now)
        if not events or signalled or now >= self.next_housekeeping_at:
            self.next_housekeeping_at = now + HOUSEKEEPING_INTERVAL
            self.housekeeping_owed = False
            self.check_timers(now)
            self.manage_workers(now)
            self.sync_store(now)
            self.send_work(now)  # and what they called for (a timer's waiter, a delayed task now due)
        else:
            self.housekeeping_owed = True  # the wait ends in time for it (next_timeout), events or not
        if self.phase == "stopping" and not self.workers:
            self._finish_stop(now)

    def send_work(self, now: float) -> None:
        """Dispatch ready tasks and write every queued frame. Called right after the events, so
        a worker's ``Run`` and a waiting client's reply are on their way while the rest of the
        pass runs: a round trip no longer waits for the timers and the worker checks."""
        if self.phase == "running":
            self.dispatcher.dispatch(now)
        self.hub.flush_output()

    def next_timeout(self, now: float) -> float:
        if self.hub.backlogged:
            return 0.0  # requests received wait: look at the other sockets, then go on with them
        candidates = [1.0]
        if self.housekeeping_owed:
            candidates.append(self.next_housekeeping_at - now)
        due = self.scheduler.delayed.next_due()
        if due is not None:
            candidates.append(due - now)
        worker_due = self.workers.next_deadline(now)
        if worker_due is not None:
            candidates.append(worker_due - now)
        waiter_due = self.hub.next_deadline()
        if waiter_due is not None:
            candidates.append(waiter_due - now)
        write_due = self.recorder.next_write_at() if self.recorder is not None else None
        if write_due is not None:
            candidates.append(write_due - now)
        if self.recorder is not None and self.recorder.pid is None and not self.recorder.abandoned:
            candidates.append(self.recorder.next_spawn_at - now)  # fork the next recorder on time
        if self.stop_deadline is not None:
            candidates.append(self.stop_deadline - now)
        if self.accept_resume_at is not None:
            candidates.append(self.accept_resume_at - now)
        return max(0.0, min(candidates))

    # -- signals -------------------------------------------------------------

    def _on_wakeup(self, key: Any, mask: int, now: float) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def handle_signals(self, now: float) -> bool:
        """Handle the signals recorded since the last pass; True if there were any."""
        handled = bool(self.pending_signals)
        while self.pending_signals:
            signum = self.pending_signals.pop(0)
            name = signal.Signals(signum).name[3:].lower()
            getattr(self, f"handle_{name}")(now)
        return handled

    def handle_chld(self, now: float) -> None:
        self.next_reap_at = now  # reap_children runs in this pass

    def handle_hup(self, now: float) -> None:
        self.reload(now)

    def handle_term(self, now: float) -> None:
        self.begin_stop(now, graceful=True)

    def handle_int(self, now: float) -> None:
        if self.phase == "stopping":
            log.warning("second SIGINT: stopping at once")
            self.stop_now(now)
        else:
            self.begin_stop(now, graceful=True)

    def handle_quit(self, now: float) -> None:
        self.stop_now(now)

    def handle_ttin(self, now: float) -> None:
        self.workers.target += 1
        log.info("SIGTTIN: target is now %d workers", self.workers.target)

    def handle_ttou(self, now: float) -> None:
        self.workers.target = max(1, self.workers.target - 1)
        log.info("SIGTTOU: target is now %d workers", self.workers.target)

    def handle_usr1(self, now: float) -> None:
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.FileHandler):
                handler.close()  # reopened on the next record
        for worker in self.workers:
            kill(worker.pid, signal.SIGUSR1)
        if self.recorder is not None and self.recorder.pid is not None:
            kill(self.recorder.pid, signal.SIGUSR1)
        log.info("SIGUSR1: log files reopened")

    # -- stop and reload -----------------------------------------------------

    def begin_stop(self, now: float, graceful: bool) -> None:
        if self.phase == "stopping":
            return
        log.info("stopping: waiting up to %.1fs for %d running task(s)", self.config.graceful_timeout, self._running())
        self.phase = "stopping"
        self.scheduler.accepting = False
        self.stop_deadline = now + self.config.graceful_timeout
        self.workers.retire_all(now, self.config.graceful_timeout)

    def stop_now(self, now: float) -> None:
        self.phase = "stopping"
        self.scheduler.accepting = False
        self.stop_deadline = now
        for worker in self.workers:
            self._kill_interrupting(worker, "stopped at once by the supervisor")

    def _kill_interrupting(self, worker: WorkerProc, why: str) -> None:
        """SIGKILL a worker; its task goes back to READY without spending an attempt."""
        if worker.task_id is not None:
            self.scheduler.interrupt(worker.task_id, why, time.monotonic())
        worker.task_id = None
        self.workers.kill(worker)

    def _finish_stop(self, now: float) -> None:
        """Workers are gone: let the recorder write what is pending, then stop."""
        recorder = self.recorder
        if recorder is None:
            self.phase = "stopped"
            return
        if self.drain_deadline is None:
            self.drain_deadline = now + RECORDER_DRAIN
            recorder.stop()
        unwritten = len(recorder.pending) + sum(len(rows) for _, rows in recorder.in_flight.values())
        if recorder.pid is None and (not unwritten or recorder.abandoned):
            if unwritten:
                log.error("%d status update(s) not written; those tasks are recovered at the next start", unwritten)
            self.phase = "stopped"
        elif now >= self.drain_deadline and not recorder.abandoned:
            log.error("the recorder did not finish writing in %.0fs; stopping it", RECORDER_DRAIN)
            recorder.abandoned = True
            recorder.kill()

    def wait_for_children(self) -> None:
        """Last resort on the way out: nothing of ours outlives the supervisor."""
        for worker in self.workers:
            kill(worker.pid)
        if self.recorder is not None:
            self.recorder.kill()
        while True:
            try:
                pid, _status = os.waitpid(-1, 0)
            except ChildProcessError:
                return
            worker = self.workers.remove(pid)
            if worker is None and self.recorder is not None and pid == self.recorder.pid:
                self.recorder.exited(_status, time.monotonic())

    def reload(self, now: float) -> None:
        """New config, new generation; old workers retire as new ones become ready."""
        if self.phase != "running":
            return
        try:
            config = load_config(self.explicit)
        except ConfigError as exc:
            log.error("SIGHUP: reload refused, configuration is invalid: %s", exc)
            return
        if config.socket_path != self.socket_path:
            log.warning("SIGHUP: the socket path cannot change on reload; keeping %s", self.socket_path)
        self.config = config
        self.dispatcher.config = config
        self.worker_events.config = config
        self.workers.target = config.workers
        self.handle_usr1(now)
        self.workers.begin_reload()
        log.info("SIGHUP: reloading, starting generation %d", self.workers.generation)
        titles.set_title(f"supervisor gen {self.workers.generation} {self.socket_path}")

    # -- children --------------------------------------------------------------

    def manage_workers(self, now: float) -> None:
        if self.phase == "running":
            self.workers.manage(now, self.config.graceful_timeout)

    def _spawn(self, wid: int, generation: int, now: float) -> WorkerProc:
        worker = spawn(
            wid, generation, self.config.import_, self.config.max_frame, self.config.client_buffer,
            self.config.max_memory_per_worker > 0, self._close_in_child, now, self.config.post_fork, self.config.spin,
        )
        self.selector.register(worker.conn.sock, selectors.EVENT_READ, self._worker_event(worker))
        log.debug("forked worker %d gen %d pid %d", wid, generation, worker.pid)
        return worker

    def _worker_event(self, worker: WorkerProc) -> Callable[[Any, int, float], None]:
        def on_event(key: Any, mask: int, now: float) -> None:
            if mask & selectors.EVENT_WRITE:
                self.hub.flush(worker.conn)
            if mask & selectors.EVENT_READ and worker.conn is not None:
                self.worker_events.read(worker, now)

        return on_event

    def reap_children(self, now: float) -> None:
        """Account for every child that exited; a fatal one is raised after all are counted."""
        if now < self.next_reap_at:
            return
        self.next_reap_at = now + REAP_INTERVAL
        fatal: SupervisorExit | None = None
        for pid, status in reap():
            try:
                self._on_child_exit(pid, status, now)
            except SupervisorExit as exc:
                fatal = fatal or exc
        if fatal is not None:
            raise fatal

    def _on_child_exit(self, pid: int, status: int, now: float) -> None:
        worker = self.workers.take(pid)  # exited() reads its last frames, then closes its channel
        if worker is not None:
            self.worker_events.exited(worker, status, now)
        elif self.recorder is not None and pid == self.recorder.pid:
            self.recorder.exited(status, now)
            if self.recorder.boot_error and not self.recorder.ever_ready:
                raise SupervisorExit(BOOT_FAILURE_EXIT, f"cannot start: {self.recorder.boot_error}")

    # -- timers ----------------------------------------------------------------

    def check_timers(self, now: float) -> None:
        self.scheduler.promote_due(now)
        self._resume_accepting(now)
        for worker in self.workers:
            if worker.deadline is not None and now >= worker.deadline:
                self._time_out(worker, now)
            elif worker.kill_at is not None and now >= worker.kill_at:
                log.warning("worker %d did not exit in time; killing it", worker.pid)
                self.workers.kill(worker)
        self.hub.expire(now, self.scheduler.info)
        if self.stop_deadline is not None and now >= self.stop_deadline:
            self.stop_deadline = None
            for worker in self.workers:
                if worker.state == WorkerState.BUSY:
                    self._kill_interrupting(worker, "stopped at the graceful timeout")

    def _time_out(self, worker: WorkerProc, now: float) -> None:
        task_id, worker.task_id = worker.task_id, None
        self.workers.kill(worker)
        if task_id is not None:
            self.scheduler.timed_out(task_id, worker.pid, now)

    # -- requests ----------------------------------------------------------------

    def _on_accept(self, key: Any, mask: int, now: float) -> None:
        if not self.hub.accept(self.listener, now):
            self.selector.unregister(self.listener)
            self.accept_resume_at = now + ACCEPT_PAUSE

    def _resume_accepting(self, now: float) -> None:
        if self.accept_resume_at is not None and now >= self.accept_resume_at and self.listener is not None:
            self.accept_resume_at = None
            self.selector.register(self.listener, selectors.EVENT_READ, self._on_accept)

    def handle_request(self, client: Client, msg: Message, now: float) -> Message | None:
        """A greeted client's request; None when the reply comes later (a wait)."""
        if isinstance(msg, Submit):
            reply = self.scheduler.submit(msg, now)
            if msg.reply:
                return reply
            if msg.stored and self.scheduler.durable:
                return None  # the stored row records any refusal
            return reply if isinstance(reply, Error) else None  # a refusal only (Client.submit_quietly)
        if isinstance(msg, Query):
            task = self.scheduler.ledger.get(msg.task_id)
            if task is None or task.is_final or msg.wait <= 0:
                return self.scheduler.info(msg.task_id)
            self.hub.wait_for(client, msg.task_id, now + min(msg.wait, MAX_WAIT))
            return None
        if isinstance(msg, QueryMany):
            reply = self.scheduler.infos(msg.task_ids, self.config.max_frame)
            if isinstance(reply, bytes):
                self.hub.reply_frame(client, reply)
                return None
            return reply
        if isinstance(msg, Cancel):
            return self.cancel(msg.task_id, now)
        if isinstance(msg, StatsRequest):
            return Stats(self.stats())
        self.hub.refuse(client, Error("bad_frame", f"{type(msg).__name__} is not a client request"))
        return None

    def _on_task_event(self, task: TaskState, event: str) -> None:
        if self.recorder is not None:
            self.recorder.note(task, hold_only=event == "stored")
        if event == "finished" and task.task_id in self.hub.waiters:  # a TaskInfo only for someone waiting
            self.hub.finished(task.task_id, encode_fields(TaskInfo, *task.info_fields()))

    # -- the store ------------------------------------------------------------------

    def _register_recorder(self, conn: Any, on_event: Callable) -> None:
        self.selector.register(conn.sock, selectors.EVENT_READ, on_event)

    def sync_store(self, now: float) -> None:
        """Send status to the recorder; ask it to sweep every few seconds, or sooner
        when the store holds a backlog and there is room for it in memory."""
        recorder = self.recorder
        if recorder is None:
            return
        recorder.tick(now)
        if self.phase != "running":
            return
        room, scheduler = self.scheduler.room(), self.scheduler
        wanted = now >= self.next_sweep_at or (scheduler.backlog_in_store and room >= self.config.max_ready // 2)
        if wanted and room > 0 and recorder.pull(min(room, PULL_LIMIT), time.time() + SWEEP_HORIZON, now):
            self.next_sweep_at = now + SWEEP_INTERVAL
            scheduler.backlog_in_store = False

    def _on_adopt(self, msg: Adopt, now: float) -> None:
        report = msg.report
        if report.get("gone") and report.get("last", True):
            log.warning("supervisor(s) %s are gone: %d task(s) to run again, %d failed out of attempts",
                        ", ".join(report["gone"]), report["requeued"], report["failed"])
        self.scheduler.adopt(msg.rows, now)
        if report.get("more"):
            self.scheduler.backlog_in_store = True

    def cancel(self, task_id: str, now: float) -> Message:
        reply, was_running = self.scheduler.cancel(task_id)
        for worker in self.workers:
            if task_id in worker.queued:  # sent ahead: the worker skips it when it gets there
                self.dispatcher.send(worker, Cancel(task_id))
        if was_running:
            for worker in self.workers:
                if worker.task_id == task_id:
                    worker.task_id = None
                    self.workers.kill(worker)
        return reply

    # -- stats -------------------------------------------------------------------

    def _running(self) -> int:
        return self.workers.busy()

    def stats(self) -> dict:
        return build_stats(self, __version__)
