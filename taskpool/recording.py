"""The supervisor's link to its recorder: what to write, what is written, what to adopt.

Every ledger event puts the task's latest state in ``pending`` (one entry per task,
so a task that starts and finishes between two batches is written once). A
``Record`` batch leaves when fewer than ``MAX_IN_FLIGHT`` are unacknowledged; a
batch stays in ``in_flight`` until the recorder says ``Recorded``. If the recorder
dies, its unacknowledged batches go back to ``pending`` (newer states win) and a
new recorder is forked, so nothing the supervisor reported is lost. ``Pull`` asks
the recorder to sweep; it always travels after the pending batches, so a sweep
never sees a row in an older state than the supervisor has already reported.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable

from .children import describe_exit, fork_child, kill
from .ledger import TaskState
from .protocol import Adopt, Error, Message, Pull, Record, Recorded, encode, encode_chunks
from .recorder import RecorderSettings, recorder_main
from .transport import Closed, FramedConnection

log = logging.getLogger("taskpool.supervisor")

MAX_IN_FLIGHT = 2
MAX_BATCH = 500
# Seconds a status change may wait to share the recorder's next transaction. 10 ms until
# issue 5's sqlite W2: with a task every ~0.15 ms, 100 small transactions a second cost the
# recorder ~65 us of CPU a task (cache reloads after each client insert, lock waits, more
# checkpoints), taken from the three processes of the round trip on two cores; at 0.1 s, ~50.
WRITE_DELAY = 0.1
INTERNAL_FRAME = 64 * 1024 * 1024  # frames between supervisor and recorder (a trusted channel)
RESPAWN_DELAYS = (0.0, 0.2, 1.0, 2.0, 5.0)
SPAWN_RETRY = 1.0  # seconds before forking again after fork itself failed
HOLD = "hold"  # pending entry of a stored submit just accepted: only held_by is written (note)


def snapshot(task: TaskState, holder: str) -> list:
    """The task as a store row: every column, in ``TaskRow``'s order (the store updates only
    the mutable ones). A list, not a map: half the bytes to encode, send and decode."""
    run = task.run
    if run is None:
        started = finished = last = progress = message = result = None
    else:
        started, finished, last = run.started_at, run.finished_at, run.last_attempted_at
        progress, message, result = run.progress, run.progress_message, run.result
    return [task.task_id, task.name, task.args, task.kwargs, task.queue, task.priority, task.run_after,
            task.timeout, task.max_attempts, task.status, task.attempts, task.enqueued_at, started, finished, last,
            list(task.worker_pids), progress, message, result, list(task.errors), holder]


class RecorderLink:
    def __init__(
        self,
        settings: RecorderSettings,
        close_in_child: Callable[[], None],
        register: Callable[[FramedConnection, Callable], None],
        release: Callable[[FramedConnection], None],
        mark_dirty: Callable[[FramedConnection], None],
        on_adopt: Callable[[Adopt, float], None],
    ) -> None:
        self.settings = settings
        self._close_in_child = close_in_child
        self._register = register
        self._release = release
        self._mark_dirty = mark_dirty
        self._on_adopt = on_adopt
        self.pid: int | None = None
        self.down_since: float | None = None  # monotonic time the recorder went away (None: up)
        self.conn: FramedConnection | None = None
        self.pending: dict[str, TaskState | list | str] = {}  # a live task, a row sent before and not acknowledged, or HOLD
        self.in_flight: dict[int, tuple[float, list[list]]] = {}
        self.seq = 0
        self.first_pending_at = 0.0  # monotonic; when the oldest pending row was noted
        self.pull_sent_at: float | None = None
        self.pull_limit = 0  # rows the outstanding pull may bring: room kept free for them
        self.release_next = False  # a claim's answer was lost with a dead recorder
        self.restarts = 0
        self.deaths_in_a_row = 0  # recorders that died before they were ready: backoff
        self.next_spawn_at = 0.0
        self.closing = False
        self.abandoned = False  # a stop gave up waiting for it: never fork it again
        self.ready = False  # this recorder process opened the store
        self.ever_ready = False
        self.boot_error: str | None = None

    # -- process -------------------------------------------------------------

    def spawn(self, now: float) -> None:
        try:
            pid, parent_end = fork_child(lambda sock: recorder_main(sock, self.settings), self._close_in_child)
        except OSError as exc:  # out of descriptors or processes: pending rows wait, nothing is dropped
            log.error("cannot fork the recorder: %s; trying again in %.0fs", exc, SPAWN_RETRY)
            self.next_spawn_at = now + SPAWN_RETRY
            return
        self.pid = pid
        self.down_since = None
        self.ready = False
        self.boot_error = None
        limit = max(INTERNAL_FRAME, self.settings.max_frame * 16)
        self.conn = FramedConnection(parent_end, limit, 1 << 31)
        self._register(self.conn, self._on_readable)
        self.pull_sent_at = None

    def exited(self, status: int, now: float) -> None:
        """The recorder died: its unacknowledged batches go back to pending."""
        if not self.ready and self.boot_error:
            log.error("%s", self.boot_error)
        if not self.closing or self.pending or self.in_flight:
            log.warning("recorder (pid %s) %s; forking a new one", self.pid, describe_exit(status))
            self.restarts += 1
            self.deaths_in_a_row = 0 if self.ready else self.deaths_in_a_row + 1
            delay = RESPAWN_DELAYS[min(self.deaths_in_a_row, len(RESPAWN_DELAYS) - 1)]
            self.next_spawn_at = now + delay
        if self.conn is not None:
            self._release(self.conn)
            self.conn = None
        self.pid = None
        self.down_since = now
        # newest batch first, so a task's latest unacknowledged state is the one kept (a state
        # noted since, already in pending, is newer still); oldest first lost a final state
        # sent in the batch after a RUNNING one, and the row stayed RUNNING in the store
        for _, (_, rows) in sorted(self.in_flight.items(), reverse=True):
            for row in rows:
                self.pending.setdefault(row[0], row)  # row[0]: the task id
        self.in_flight.clear()
        if self.pull_sent_at is not None:
            self.release_next = True
        self.pull_sent_at = None

    def stop(self) -> None:
        """Close the channel once everything is written; the recorder exits on EOF."""
        self.closing = True
        if self.conn is not None and not self.pending and not self.in_flight:
            self._release(self.conn)
            self.conn = None

    def kill(self) -> None:
        self.closing = True
        if self.pid is not None:
            kill(self.pid)

    # -- data ----------------------------------------------------------------

    def note(self, task: TaskState, hold_only: bool = False) -> None:
        """The row is written as it is when the batch leaves (its latest state), so a task
        accepted, started and finished between two batches costs one snapshot.

        ``hold_only``: a stored submit just accepted: its row, as the client wrote it, only
        needs to say this supervisor holds it. A two-item row, [task id, holder], asks for that
        (an UPDATE of one column) unless a fuller state is noted before the batch leaves: half of the rows a
        burst of submits made the recorder write, a full upsert each."""
        if hold_only:
            if not self.pending:
                self.first_pending_at = time.monotonic()
            self.pending.setdefault(task.task_id, HOLD)  # the row is made at flush: no dict per waiting task
            return
        if not self.pending:
            self.first_pending_at = time.monotonic()
        self.pending[task.task_id] = task

    def tick(self, now: float) -> None:
        unwritten = bool(self.pending or self.in_flight)
        wanted = not self.closing or (unwritten and not self.abandoned)
        if self.pid is None and wanted and now >= self.next_spawn_at:
            self.spawn(now)
        due = self.next_write_at()
        if self.closing or (due is not None and now >= due):
            self.flush(now)
        if self.closing:
            self.stop()

    def next_write_at(self) -> float | None:
        """When the pending rows should leave: a full batch at once, else ``WRITE_DELAY``
        after the first one, so a task's RUNNING and final states (and a web request's
        next insert) do not each meet a transaction of the recorder's. None while nothing
        can leave (no recorder, or ``MAX_IN_FLIGHT`` batches unacknowledged): the loop would
        otherwise spin until the recorder answers; its answer wakes the loop instead."""
        if not self.pending or self.conn is None or len(self.in_flight) >= MAX_IN_FLIGHT:
            return None
        if len(self.pending) >= MAX_BATCH:
            return 0.0
        return self.first_pending_at + WRITE_DELAY

    def flush(self, now: float) -> None:
        while self.conn is not None and self.pending and len(self.in_flight) < MAX_IN_FLIGHT:
            batch = []
            holder = self.settings.supervisor_id
            for task_id in list(itertools.islice(self.pending, MAX_BATCH)):  # not list(pending): 100k ids per batch
                entry = self.pending.pop(task_id)
                if entry is HOLD:
                    batch.append([task_id, holder])
                else:
                    batch.append(entry if type(entry) is list else snapshot(entry, holder))
            if not self.pending:
                self.pending = {}  # a dict never shrinks: a drained backlog's table goes back to the OS
            next_seq = self.seq + 1
            parts = encode_chunks(lambda rows, seq=next_seq: Record(seq, rows), batch, self.conn.decoder.max_frame)
            for rows, frame in parts:  # each part is its own batch, acknowledged on its own
                self.seq += 1
                self.in_flight[self.seq] = (now, rows)
                self.conn.send_bytes(frame if len(parts) == 1 else encode(Record(self.seq, rows)))
            self._flush_conn()

    def pull(self, limit: int, horizon: float, now: float) -> bool:
        """Ask for a sweep unless one is under way; False when it could not be sent."""
        if self.conn is None or self.pull_sent_at is not None:
            return False
        self.flush(now)
        self.pull_sent_at, self.pull_limit = now, limit
        self.conn.send(Pull(limit, horizon, self.release_next))
        self.release_next = False
        self._flush_conn()
        return True

    def rows_promised(self) -> int:
        """How many rows the pull under way may still bring (0 when none is)."""
        return self.pull_limit if self.pull_sent_at is not None else 0

    def _flush_conn(self) -> None:
        self._mark_dirty(self.conn)  # written at the end of the loop pass, with the rest

    def _on_readable(self, key: object, mask: int, now: float) -> None:
        if self.conn is None:
            return
        if mask & 2:  # selectors.EVENT_WRITE
            self._mark_dirty(self.conn)
        try:
            for msg in self.conn.read():
                self._handle(msg, now)
        except Closed:
            self._release(self.conn)
            self.conn = None

    def _handle(self, msg: Message, now: float) -> None:
        if isinstance(msg, Recorded):
            self.ready = self.ever_ready = True
            for seq in [s for s in self.in_flight if s <= msg.seq]:
                del self.in_flight[seq]
        elif isinstance(msg, Error) and msg.code == "boot_failed":
            self.boot_error = msg.message
        elif isinstance(msg, Adopt):
            if msg.report.get("last", True):
                self.pull_sent_at = None
            self._on_adopt(msg, now)

    # -- health --------------------------------------------------------------

    def lag(self, now: float) -> float:
        """Seconds the oldest unacknowledged batch has waited (0 when all is written)."""
        if not self.in_flight:
            return 0.0
        return round(now - min(sent for sent, _ in self.in_flight.values()), 3)

    def stats(self, now: float) -> dict:
        return {
            "pid": self.pid, "store": self.settings.store, "pending": len(self.pending),
            "in_flight": sum(len(rows) for _, rows in self.in_flight.values()),
            "lag": self.lag(now), "restarts": self.restarts,
            "down_for": 0.0 if self.down_since is None else round(now - self.down_since, 3),
            "last_pull_age": None if self.pull_sent_at is None else round(time.monotonic() - self.pull_sent_at, 3),
        }
