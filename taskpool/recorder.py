"""The recorder: the one process that writes task status to the store.

Forked and supervised by the supervisor (which never touches the database), it
reads frames from its socketpair::

    Record(seq, rows) -> store.record(rows, held) in one transaction -> Recorded(seq)
    Pull(limit, horizon) -> heartbeat, recover what dead supervisors held,
                            claim unheld READY rows -> Adopt(rows, report)

A batch is acknowledged only once committed; if the recorder dies first, the
supervisor sends it again to the next recorder (writes are idempotent upserts,
and a final status is never overwritten). A store error (locked, disk full) is
retried with backoff, never dropped. Between frames it beats the heartbeat and
deletes finished rows past their retention, a small batch at a time.

Which supervisors are gone: each supervisor holds an exclusive flock on
``SPOOL/locks/<id>.lock`` for its whole life, inherited by its workers and its
recorder, so the lock is free exactly when that supervisor and all its children
are dead - known at once on restart, no lease to wait out. Holders with no lock
file (another host sharing a database) are judged by their heartbeat.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
import traceback

from . import titles
from .errors import StoreError
from .locks import lock_is_free, lock_path
from .protocol import Adopt, Error, Pull, Record, Recorded, encode_chunks
from .records import record
from .stores import Store, SupervisorRecord, TaskRow, open_store
from .transport import Channel, Closed

log = logging.getLogger("taskpool.recorder")

BOOT_ERROR_EXIT = 3
PURGE_BUDGET = 0.2  # seconds of deleting per housekeeping pass
HEARTBEAT_INTERVAL = 2.0
HEARTBEAT_TIMEOUT = 30.0  # a holder without a lock file is gone after this long silent
PURGE_BATCH = 500
RETRY_DELAYS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0)


@record
class RecorderSettings:
    store: str
    spool: str
    supervisor_id: str
    retention: float  # seconds finished rows are kept
    max_frame: int
    started_at: float


class Recorder:
    def __init__(self, channel: Channel, store: Store, settings: RecorderSettings) -> None:
        self.channel = channel
        self.frame_limit = channel.decoder.max_frame
        self.store = store
        self.settings = settings
        self.next_heartbeat = 0.0

    def serve(self) -> None:
        while True:
            self.channel.settimeout(max(0.05, self.next_heartbeat - time.monotonic()))
            try:
                msg = self.channel.recv()
            except TimeoutError:
                self.housekeeping()
                reopen_logs_if_asked()
                continue
            if isinstance(msg, Record):
                rows, held = [], []
                for row in msg.rows:  # lists in TaskRow's order; [task id, holder] only claims a stored submit
                    if len(row) == 2:
                        held.append(row[0])
                    else:
                        rows.append(TaskRow(*row))
                self._persist(lambda rows=rows, held=held: self.store.record(rows, held, self.settings.supervisor_id))
                self.channel.send(Recorded(msg.seq))
            elif isinstance(msg, Pull):
                self.answer_pull(self.sweep(msg.limit, msg.horizon, msg.release_mine))
            if time.monotonic() >= self.next_heartbeat:
                self.housekeeping()
            reopen_logs_if_asked()

    def answer_pull(self, adopt: Adopt) -> None:
        """Send the adopted rows in as many frames as they need; the last one says so."""
        parts = encode_chunks(lambda rows: Adopt(rows, {**adopt.report, "last": False}), adopt.rows, self.frame_limit)
        for _rows, frame in parts[:-1]:
            self.channel.send_bytes(frame)
        self.channel.send(Adopt(parts[-1][0], {**adopt.report, "last": True}))

    def _persist(self, write) -> object:
        """Run a store write until it succeeds; a recorder never drops what it was told."""
        for attempt in range(10**9):
            try:
                return write()
            except StoreError as exc:
                delay = RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)]
                if attempt in (0, 10) or attempt % 100 == 0:
                    log.error("store write failed (will retry every %.2fs): %s", delay, exc)
                time.sleep(delay)
        raise AssertionError("unreachable")

    def housekeeping(self) -> None:
        now = time.time()
        self.next_heartbeat = time.monotonic() + HEARTBEAT_INTERVAL
        s = self.settings
        try:
            self.store.heartbeat(SupervisorRecord(s.supervisor_id, socket.gethostname(), os.getppid(), s.started_at, now))
            budget = time.monotonic() + PURGE_BUDGET
            while self.store.purge(now - s.retention, PURGE_BATCH) == PURGE_BATCH and time.monotonic() < budget:
                pass
            self._forget_locks(self.stale_locks())
        except StoreError as exc:
            log.error("housekeeping failed: %s", exc)

    def stale_locks(self) -> list[str]:
        """Supervisors of this spool whose lock is free (stopped or dead), holding nothing."""
        directory = os.path.join(self.settings.spool, "locks")
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            return []
        holders = self.store.holders()
        ids = (n.removesuffix(".lock") for n in names if n.endswith(".lock"))
        return [i for i in ids if i != self.settings.supervisor_id and i not in holders
                and lock_is_free(self.settings.spool, i)]

    def gone_holders(self, now: float) -> list[str]:
        """Supervisors holding rows that are certainly gone (lock free) or silent too long."""
        me = self.settings.supervisor_id
        beats = {r.supervisor_id: r.heartbeat_at for r in self.store.supervisors()}
        gone = []
        for holder in self.store.holders() - {me}:
            free = lock_is_free(self.settings.spool, holder)
            if free or (free is None and now - beats.get(holder, 0.0) > HEARTBEAT_TIMEOUT):
                gone.append(holder)
        return gone

    def sweep(self, limit: int, horizon: float, release_mine: bool = False) -> Adopt:
        now = time.time()
        report: dict = {"requeued": 0, "failed": 0, "gone": [], "more": False}

        def work() -> list[TaskRow]:
            if release_mine:
                self.store.release(self.settings.supervisor_id)
            gone = self.gone_holders(now)
            if gone:
                recovery = self.store.recover(self.settings.supervisor_id, gone, now)
                report.update(requeued=len(recovery.requeued), failed=len(recovery.failed), gone=gone)
                self._forget_locks(gone)
            return self.store.claim(self.settings.supervisor_id, limit, horizon) if limit > 0 else []

        rows = self._persist(work)
        report["more"] = limit > 0 and len(rows) >= limit  # the store may hold more: pull again soon
        return Adopt([r.as_dict() for r in rows], report)

    def _forget_locks(self, gone: list[str]) -> None:
        self.store.forget_supervisors(gone)
        for holder in gone:
            try:
                os.unlink(lock_path(self.settings.spool, holder))
            except FileNotFoundError:
                pass


_reopen_logs = False


def _ask_reopen(signum: int, frame: object) -> None:
    global _reopen_logs
    _reopen_logs = True


def reopen_logs_if_asked() -> None:
    global _reopen_logs
    if _reopen_logs:
        _reopen_logs = False
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.FileHandler):
                handler.close()  # FileHandler reopens on the next record


def recorder_main(sock: socket.socket, settings: RecorderSettings) -> int:
    """Entry point in the forked child; returns the exit code (3: the store cannot be opened)."""
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU):
        signal.signal(sig, lambda signum, frame: None)  # the supervisor decides when we stop
    signal.signal(signal.SIGUSR1, _ask_reopen)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    titles.set_title(f"recorder {settings.store} {settings.spool}")
    sock.setblocking(True)
    channel = Channel(sock, max(64 * 1024 * 1024, settings.max_frame * 16), trusted=True)
    try:
        try:
            store = open_store(settings.store, settings.spool)
        except Exception as exc:  # any failure to open the store is reported, not retried here
            detail = "".join(traceback.format_exception_only(exc)).strip()
            channel.send(Error("boot_failed", f"the recorder cannot open the {settings.store} store: {detail}", None))
            return BOOT_ERROR_EXIT
        store.serve_as_recorder()
        channel.send(Recorded(0))  # ready
        Recorder(channel, store, settings).serve()
    except (Closed, BrokenPipeError, ConnectionError):
        return 0
    except BaseException:
        traceback.print_exc()
        return 1
    return 0
