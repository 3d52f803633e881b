"""The default store: one SQLite database in the spool directory (stdlib sqlite3, WAL).

WAL lets the web processes insert while the recorder writes and the handles read.
``synchronous=NORMAL``: a committed row survives the death of any process (the
supervisor, a worker, the web server); after a power loss the last transactions
before it may be missing but the database is never corrupt. Each process and
thread gets its own connection (made again after a fork). Transactions are
explicit (``BEGIN IMMEDIATE``) so a batch is all or nothing (a one-row insert is a
single autocommit statement, which is its own transaction), and every sqlite3
error comes out as a StoreError that names the database file.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from operator import attrgetter
from typing import TypeVar

from ..errors import StoreError
from ..protocol import READY, RUNNING
from ..records import field_names
from .base import MUTABLE, Recovery, Store, SupervisorRecord, TaskRow, orphan

log = logging.getLogger("taskpool.store")

FILENAME = "taskpool.sqlite3"
BUSY_TIMEOUT_MS = 5000
T = TypeVar("T")
COLUMNS = field_names(TaskRow)
JSON_COLUMNS = frozenset({"args", "kwargs", "worker_ids", "result", "errors"})
FINAL_SQL = "('SUCCESSFUL', 'FAILED', 'CANCELLED')"

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS taskpool_task (
    task_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    args TEXT NOT NULL,
    kwargs TEXT NOT NULL,
    queue TEXT NOT NULL,
    priority INTEGER NOT NULL,
    run_after REAL,
    timeout REAL,
    max_attempts INTEGER NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    enqueued_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    last_attempted_at REAL,
    worker_ids TEXT NOT NULL,
    progress REAL,
    progress_message TEXT,
    result TEXT,
    errors TEXT NOT NULL,
    held_by TEXT
);
CREATE INDEX IF NOT EXISTS taskpool_task_ready
    ON taskpool_task (held_by, priority DESC, enqueued_at) WHERE status = '{READY}';
CREATE INDEX IF NOT EXISTS taskpool_task_running ON taskpool_task (held_by) WHERE status = '{RUNNING}';
CREATE INDEX IF NOT EXISTS taskpool_task_finished
    ON taskpool_task (finished_at) WHERE status IN {FINAL_SQL};
CREATE TABLE IF NOT EXISTS taskpool_supervisor (
    supervisor_id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    started_at REAL NOT NULL,
    heartbeat_at REAL NOT NULL
);
"""

_INSERT = f"INSERT INTO taskpool_task ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
_UPSERT = (
    _INSERT
    + " ON CONFLICT(task_id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in MUTABLE)
    + f" WHERE taskpool_task.status NOT IN {FINAL_SQL}"
)


_HOLD = f"UPDATE taskpool_task SET held_by = ? WHERE task_id = ? AND status = '{READY}'"


# WAL checkpoints (copying the log into the database, ~3 ms with an fsync here) are run by
# whichever commit finds the log past its connection's threshold. Clients' threshold is ten
# times the recorder's, so the recorder, which commits every few ms while tasks flow, does
# them and a submit() does not; clients still do when no recorder runs, past ~40 MiB of log.
CLIENT_AUTOCHECKPOINT = 10_000  # pages
RECORDER_AUTOCHECKPOINT = 1_000  # pages: SQLite's default
# Those checkpoints are passive: while writers follow each other without a pause (several
# processes submitting flat out) one never catches up, the log never starts over and grows
# by gigabytes. So now and then (every CLIENT_WAL_CHECK_EVERY commits; the recorder after
# every batch) a connection looks at the log's size and, past WAL_LIMIT, checkpoints all of
# it and empties it, holding new writers off meanwhile.
WAL_LIMIT = 64 * 2**20  # bytes: W1 of the benchmark (20,000 tasks flat out) peaks at ~18 MiB
CLIENT_WAL_CHECK_EVERY = 64  # commits between looks (a stat()); the recorder looks after each batch
WAL_RETRY_AFTER = 1_000  # commits before trying again when the log could not be emptied
TRUNCATE_WAIT_MS = 250  # how long that checkpoint waits for other readers and writers
LOCK_RETRY_FIRST = 0.0001  # seconds before the first retry of a locked database; doubled each time
LOCK_RETRY_MAX = 0.002


def _until_unlocked(statement: Callable[[], T]) -> T:
    """Run ``statement``; while SQLite answers "database is locked" (another process holds the
    write lock: the recorder's batch, a client's insert), run it again after 0.1 ms, doubling
    up to 2 ms, for up to ``BUSY_TIMEOUT_MS``. Connections have no busy timeout of their own:
    SQLite's handler sleeps 1 ms, then 2, 5, 10 ms..., so a submit that met a transaction of
    1.1 ms waited 3 ms, and a recorder batch that met a submit's insert waited 1 ms."""
    try:
        return statement()
    except sqlite3.OperationalError as exc:
        if not _busy(exc):
            raise
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    delay = LOCK_RETRY_FIRST
    while True:
        time.sleep(delay)
        try:
            return statement()
        except sqlite3.OperationalError as exc:
            if not _busy(exc) or time.monotonic() > deadline:
                raise
        delay = min(delay * 2, LOCK_RETRY_MAX)


def _busy(exc: sqlite3.Error) -> bool:
    """SQLITE_BUSY or one of its extended codes (BUSY_RECOVERY while another connection
    recovers the WAL, BUSY_SNAPSHOT, BUSY_TIMEOUT): Python gives the extended code."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF == sqlite3.SQLITE_BUSY


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def _make_dumps() -> Callable[[object], str]:
    """``_ENCODER.encode``, without its per-call cost: ``encode`` builds a new C encoder on
    every call (1.1 us even for None, most of a row's JSON time). This builds the same C
    encoder once, with the same settings; the one difference is no check for circular
    containers, which stored values cannot have (arguments are checked for depth by
    check_json_compatible; results and errors are decoded from msgpack). Falls back to
    ``encode`` where the C encoder is missing or does not give the same text."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return _ENCODER.encode
    try:
        fast = make(None, _ENCODER.default, json.encoder.encode_basestring, None,
                    _ENCODER.key_separator, _ENCODER.item_separator, False, False, True)
    except TypeError:  # another signature: not this interpreter's private API any more
        return _ENCODER.encode

    def dumps(value: object) -> str:
        return "".join(fast(value, 0))

    sample = [None, True, 1, -2**63, 2**64 - 1, 1.5, 1e300, "é\n\"", [], {}, {"k": [{"x": 0.1}]}]
    try:
        same = all(dumps(v) == _ENCODER.encode(v) for v in (sample, *sample))
    except Exception:
        same = False
    return dumps if same else _ENCODER.encode


_dumps = _make_dumps()
_JSON_AT = tuple(i for i, c in enumerate(COLUMNS) if c in JSON_COLUMNS)
_row_values = attrgetter(*COLUMNS)


def _to_params(row: TaskRow) -> list:
    """A row's column values in COLUMNS order, the JSON columns as text (None as 'null').
    A list filled in place: a generator over all 21 columns cost more than the JSON."""
    values = list(_row_values(row))
    for i in _JSON_AT:
        value = values[i]
        values[i] = "null" if value is None else "[]" if value == [] else _dumps(value)
    return values


def _from_record(record: sqlite3.Row) -> TaskRow:
    values = {c: (json.loads(record[c]) if c in JSON_COLUMNS and record[c] is not None else record[c]) for c in COLUMNS}
    return TaskRow(**values)


class SqliteStore(Store):
    name = "sqlite"

    def __init__(self, path: str) -> None:
        self.path = path
        self.spool = os.path.dirname(os.path.abspath(path))
        self._local = threading.local()
        self.autocheckpoint = CLIENT_AUTOCHECKPOINT
        self.wal_limit, self.wal_check_every = WAL_LIMIT, CLIENT_WAL_CHECK_EVERY
        db = self._connection()
        try:
            exists = _until_unlocked(
                lambda: db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'taskpool_task'").fetchone()
            )
            if not exists:
                _until_unlocked(lambda: db.executescript(SCHEMA))  # idempotent; commits itself
        except sqlite3.Error as exc:
            raise StoreError(f"cannot create the task database {self.path}: {exc}") from None

    @classmethod
    def open(cls, spool: str) -> SqliteStore:
        from ..errors import ConfigError
        from ..transport import ensure_private_dir

        try:
            ensure_private_dir(spool)
        except (OSError, ConfigError) as exc:
            raise StoreError(f"cannot use the spool directory {spool}: {exc}") from None
        return cls(os.path.join(spool, FILENAME))

    # -- connections -----------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        local = self._local
        db = getattr(local, "db", None)
        if db is not None and local.pid == os.getpid():
            return db
        db = None  # an inherited connection (another pid) is never touched
        old_umask = os.umask(0o077)  # the database and its WAL files are private
        try:
            # timeout=0: no busy handler; every statement that may meet a lock goes through
            # _until_unlocked, which retries at a finer grain than SQLite's own handler
            db = sqlite3.connect(self.path, timeout=0, isolation_level=None, check_same_thread=False)
            db.row_factory = sqlite3.Row
            _until_unlocked(lambda: self._set_up(db))
        except sqlite3.Error as exc:
            if db is not None:
                db.close()  # not left open (a descriptor) when its settings could not be made
            raise StoreError(f"cannot open the task database {self.path}: {exc}") from None
        finally:
            os.umask(old_umask)
        local.db, local.pid, local.commits, local.next_wal_check = db, os.getpid(), 0, 0
        return db

    def _committed(self, db: sqlite3.Connection) -> None:
        """Count a commit; now and then, empty a log that has grown past its limit."""
        local = self._local
        local.commits += 1
        if local.commits < local.next_wal_check:
            return
        local.next_wal_check = local.commits + self.wal_check_every
        try:
            size = os.stat(self.path + "-wal").st_size
        except OSError:
            return
        if size > self.wal_limit and not self._truncate_wal(db):
            local.next_wal_check = local.commits + WAL_RETRY_AFTER

    def _truncate_wal(self, db: sqlite3.Connection) -> bool:
        """Checkpoint the whole log and truncate it, waiting up to TRUNCATE_WAIT_MS for the
        other connections (whose writes meanwhile wait in _until_unlocked); True if done."""
        try:
            db.execute(f"PRAGMA busy_timeout={TRUNCATE_WAIT_MS}")
            busy = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        except sqlite3.Error as exc:
            log.debug("task database %s: the log was not emptied: %s", self.path, exc)
            return False
        finally:
            db.execute("PRAGMA busy_timeout=0")
        return not busy

    def _set_up(self, db: sqlite3.Connection) -> None:
        """A new connection's settings; run again as a whole if the database was busy."""
        if db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            db.execute("PRAGMA journal_mode=WAL")  # once per database file
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(f"PRAGMA wal_autocheckpoint={self.autocheckpoint}")

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        db = self._connection()
        try:
            _until_unlocked(lambda: db.execute("BEGIN IMMEDIATE"))
            try:
                yield db
            except BaseException:
                if db.in_transaction:  # SQLite may have rolled back already (disk full, I/O error)
                    db.execute("ROLLBACK")
                raise
            _until_unlocked(lambda: db.execute("COMMIT"))  # a busy COMMIT leaves the transaction open: retry
            self._committed(db)
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise StoreError(f"task database {self.path}: {exc}") from None

    def _read(self, sql: str, params: Sequence = ()) -> list[sqlite3.Row]:
        try:
            db = self._connection()
            return _until_unlocked(lambda: db.execute(sql, params).fetchall())
        except sqlite3.Error as exc:
            raise StoreError(f"task database {self.path}: {exc}") from None

    def serve_as_recorder(self) -> None:
        self.autocheckpoint = RECORDER_AUTOCHECKPOINT
        self.wal_check_every = 1
        db = getattr(self._local, "db", None)
        if db is not None and self._local.pid == os.getpid():
            db.execute(f"PRAGMA wal_autocheckpoint={self.autocheckpoint}")

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None and self._local.pid == os.getpid():
            db.close()
        self._local.db = None

    # -- client side -------------------------------------------------------------

    def insert(self, rows: Sequence[TaskRow]) -> None:
        params = [_to_params(r) for r in rows]  # a value JSON refuses fails here, before any write
        if len(params) != 1:
            with self._transaction() as db:
                db.executemany(_INSERT, params)
            return
        # One row: one INSERT in autocommit mode is its own transaction, as atomic and as
        # durable as BEGIN IMMEDIATE + INSERT + COMMIT (it takes the same write lock, waits the
        # same busy timeout and is committed when execute() returns) without the two extra
        # statements (2 us of the 22 us a submit() spends in the store).
        db = self._connection()
        try:
            _until_unlocked(lambda: db.execute(_INSERT, params[0]))
            self._committed(db)
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise StoreError(f"task database {self.path}: {exc}") from None

    def fetch(self, task_id: str) -> TaskRow | None:
        found = self._read("SELECT * FROM taskpool_task WHERE task_id = ?", (task_id,))
        return _from_record(found[0]) if found else None

    def cancel_ready(self, task_id: str, now: float, held_by: str | None) -> bool:
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE taskpool_task SET status = 'CANCELLED', finished_at = ?"
                " WHERE task_id = ? AND status = ? AND held_by IS ?",
                (now, task_id, READY, held_by),
            )
            return cursor.rowcount == 1

    # -- recorder side -------------------------------------------------------------

    def record(self, rows: Sequence[TaskRow], held: Sequence[str] = (), holder: str | None = None) -> None:
        params = [_to_params(r) for r in rows]  # before the write lock is taken: clients wait on it
        holds = [(holder, task_id) for task_id in held]
        with self._transaction() as db:
            if params:
                db.executemany(_UPSERT, params)
            if holds:
                db.executemany(_HOLD, holds)

    def claim(self, supervisor_id: str, limit: int, horizon: float) -> list[TaskRow]:
        with self._transaction() as db:
            found = db.execute(
                f"UPDATE taskpool_task SET held_by = ? WHERE task_id IN ("
                f" SELECT task_id FROM taskpool_task WHERE status = '{READY}' AND held_by IS NULL"
                f" AND (run_after IS NULL OR run_after <= ?) ORDER BY priority DESC, enqueued_at LIMIT ?)"
                f" RETURNING *",
                (supervisor_id, horizon, limit),
            ).fetchall()
        rows = [_from_record(r) for r in found]
        rows.sort(key=lambda r: (-r.priority, r.enqueued_at))
        return rows

    def recover(self, supervisor_id: str, gone: Sequence[str], now: float) -> Recovery:
        report = Recovery()
        if not gone:
            return report
        marks = ", ".join("?" * len(gone))
        with self._transaction() as db:
            db.execute(f"UPDATE taskpool_task SET held_by = NULL WHERE status = '{READY}' AND held_by IN ({marks})", gone)
            running = db.execute(f"SELECT * FROM taskpool_task WHERE status = '{RUNNING}' AND held_by IN ({marks})", gone)
            updates = []
            for row in map(_from_record, running.fetchall()):
                (report.requeued if orphan(row, now) else report.failed).append(row.task_id)
                updates.append((row.status, row.finished_at, _dumps(row.errors), row.task_id))
            db.executemany(
                "UPDATE taskpool_task SET status = ?, finished_at = ?, errors = ?, held_by = NULL WHERE task_id = ?",
                updates,
            )
        return report

    def release(self, supervisor_id: str) -> int:
        with self._transaction() as db:
            cursor = db.execute(
                f"UPDATE taskpool_task SET held_by = NULL WHERE status = '{READY}' AND held_by = ?", (supervisor_id,)
            )
            return cursor.rowcount

    def holders(self) -> set[str]:
        # Two selects, each on its partial index: "status IN (READY, RUNNING)" matches neither
        # index's WHERE, so one select scanned the whole table, finished rows included (a week
        # of them by default), on every sweep (2 s) and heartbeat. Rows are found by index now.
        found = self._read(
            f"SELECT held_by FROM taskpool_task WHERE status = '{READY}' AND held_by IS NOT NULL UNION"
            f" SELECT held_by FROM taskpool_task WHERE status = '{RUNNING}' AND held_by IS NOT NULL"
        )
        return {r[0] for r in found}

    def heartbeat(self, record: SupervisorRecord) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO taskpool_supervisor VALUES (?, ?, ?, ?, ?) ON CONFLICT(supervisor_id)"
                " DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
                (record.supervisor_id, record.host, record.pid, record.started_at, record.heartbeat_at),
            )

    def supervisors(self) -> list[SupervisorRecord]:
        return [SupervisorRecord(*r) for r in self._read("SELECT * FROM taskpool_supervisor")]

    def forget_supervisors(self, ids: Sequence[str]) -> None:
        if ids:
            with self._transaction() as db:
                db.execute(f"DELETE FROM taskpool_supervisor WHERE supervisor_id IN ({', '.join('?' * len(ids))})", ids)

    def purge(self, finished_before: float, limit: int) -> int:
        with self._transaction() as db:
            cursor = db.execute(
                f"DELETE FROM taskpool_task WHERE task_id IN (SELECT task_id FROM taskpool_task"
                f" WHERE status IN {FINAL_SQL} AND finished_at < ? LIMIT ?)",
                (finished_before, limit),
            )
            return cursor.rowcount

    def counts(self) -> dict[str, int]:
        return {r[0]: r[1] for r in self._read("SELECT status, COUNT(*) FROM taskpool_task GROUP BY status")}
