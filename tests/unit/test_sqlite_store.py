"""The sqlite store's write path: the JSON text of a row, one-row inserts as a single
autocommit statement, batches all or nothing. No supervisor needed."""

from __future__ import annotations

import json
import os
import sqlite3
import threading

import pytest

from taskpool.errors import StoreError
from taskpool.stores import sqlite as sqlite_store
from taskpool.stores.base import TaskRow
from taskpool.stores.sqlite import COLUMNS, JSON_COLUMNS, SqliteStore

REFERENCE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode  # what rows were written with

VALUES = [
    None, True, False, 0, -1, 2**63 - 1, -(2**63), 2**64 - 1, 0.1, -2.5e-308, 1e300, 3.0,
    "", "plain", "é ü 中文 \U0001f600", 'quote " backslash \\ newline \n tab \t nul \x00',
    [], {}, [1, "a", None, [2, [3, {}]]], {"k": {"nested": [1.5, {"deep": "x"}]}, "": []},
    (1, 2), [(3, 4)],
]


def reference_params(row: TaskRow) -> tuple:
    """The parameters as the store made them before (a generator over all columns)."""
    return tuple(
        ("[]" if value == [] else REFERENCE(value)) if column in JSON_COLUMNS else value
        for column, value in zip(COLUMNS, (getattr(row, c) for c in COLUMNS), strict=True)
    )


@pytest.fixture
def store(tmp_path):
    s = SqliteStore.open(str(tmp_path / "spool"))
    yield s
    s.close()


def other_connection(store: SqliteStore) -> sqlite3.Connection:
    return sqlite3.connect(store.path, isolation_level=None, check_same_thread=False)


@pytest.mark.parametrize("value", VALUES)
def test_dumps_gives_the_same_text_as_the_json_encoder(value):
    assert sqlite_store._dumps(value) == REFERENCE(value)


def test_dumps_skips_the_per_call_encoder_on_cpython():
    assert sqlite_store._dumps is not sqlite_store._ENCODER.encode


def test_dumps_refuses_what_the_json_encoder_refuses():
    for bad in (object(), {1: {2j}}, [b"bytes"]):
        with pytest.raises(TypeError):
            REFERENCE(bad)
        with pytest.raises(TypeError):
            sqlite_store._dumps(bad)


@pytest.mark.parametrize("value", VALUES)
def test_row_parameters_are_unchanged(value):
    row = TaskRow("t" * 32, "m.f", [value], {"v": value}, result=value, errors=[{"e": value}], worker_ids=[1, 2])
    assert tuple(sqlite_store._to_params(row)) == reference_params(row)
    fresh = TaskRow("t" * 32, "m.f", [], {})  # a new READY row: empty lists, no result
    assert tuple(sqlite_store._to_params(fresh)) == reference_params(fresh)


def test_one_row_insert_is_committed_when_insert_returns(store):
    row = TaskRow("a" * 32, "m.f", [1, "x"], {"k": [None]}, enqueued_at=12.5)
    store.insert([row])
    assert not store._connection().in_transaction
    with other_connection(store) as db:  # another process's view: committed, not pending
        found = db.execute("SELECT name, args, kwargs, status, result, errors FROM taskpool_task").fetchall()
    assert found == [("m.f", '[1,"x"]', '{"k":[null]}', "READY", "null", "[]")]
    assert store.fetch("a" * 32) == row


def test_one_row_insert_failure_is_a_store_error_and_leaves_no_transaction(store):
    row = TaskRow("b" * 32, "m.f", [], {})
    store.insert([row])
    with pytest.raises(StoreError, match="UNIQUE"):
        store.insert([row])
    assert not store._connection().in_transaction
    store.insert([TaskRow("c" * 32, "m.f", [], {})])  # the connection is still usable
    assert store.counts() == {"READY": 2}


def test_a_value_json_refuses_writes_nothing(store):
    for rows in ([TaskRow("d" * 32, "m.f", [object()], {})],
                 [TaskRow("e" * 32, "m.f", [], {}), TaskRow("f" * 32, "m.f", [object()], {})]):
        with pytest.raises(TypeError):
            store.insert(rows)
    assert store.counts() == {}
    assert not store._connection().in_transaction


def test_a_batch_is_all_or_nothing(store):
    store.insert([TaskRow("g" * 32, "m.f", [], {})])
    with pytest.raises(StoreError):
        store.insert([TaskRow("h" * 32, "m.f", [], {}), TaskRow("g" * 32, "m.f", [], {})])
    assert store.fetch("h" * 32) is None
    store.insert([TaskRow("i" * 32, "m.f", [], {}), TaskRow("j" * 32, "m.f", [], {})])
    assert store.counts() == {"READY": 3}


def test_one_row_insert_waits_for_another_writer(store):
    """Like BEGIN IMMEDIATE, the single statement waits (busy timeout) for a writer that
    holds the lock, rather than failing with 'database is locked'."""
    holder = other_connection(store)
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("INSERT INTO taskpool_supervisor VALUES ('s', 'h', 1, 0, 0)")
    releaser = threading.Timer(0.2, lambda: holder.execute("COMMIT"))  # while the insert waits, most likely
    releaser.start()
    try:
        store.insert([TaskRow("k" * 32, "m.f", [], {})])
    finally:
        releaser.join()
        holder.close()
    assert store.fetch("k" * 32) is not None
    assert [r.supervisor_id for r in store.supervisors()] == ["s"]


def test_the_database_keeps_wal_and_synchronous_normal(store):
    db = store._connection()
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL


def test_record_holds_ready_rows_in_the_same_transaction_and_leaves_others_alone(store):
    store.insert([TaskRow("ready", "m.t", [1], {}), TaskRow("done", "m.t", [], {}), TaskRow("other", "m.t", [], {})])
    store.record([TaskRow("done", "m.t", [], {}, status="SUCCESSFUL", attempts=1, result=3, held_by="sup")])
    store.record([TaskRow("other", "m.t", [], {}, status="RUNNING", attempts=1, held_by="sup")],
                 held=["ready", "done", "missing"], holder="sup")
    ready, done, other = (store.fetch(i) for i in ("ready", "done", "other"))
    assert (ready.status, ready.held_by, ready.args) == ("READY", "sup", [1])  # only held_by changed
    assert (done.status, done.result) == ("SUCCESSFUL", 3)  # final rows are never touched
    assert (other.status, other.held_by) == ("RUNNING", "sup")
    assert store.fetch("missing") is None  # a hold creates nothing


def test_holders_are_the_supervisors_holding_ready_or_running_rows(store):
    store.insert([
        TaskRow("r" * 32, "m.t", [], {}, held_by="ready-holder"),
        TaskRow("u" * 32, "m.t", [], {}, status="RUNNING", attempts=1, held_by="running-holder"),
        TaskRow("s" * 32, "m.t", [], {}, status="SUCCESSFUL", attempts=1, finished_at=1.0, held_by="finished"),
        TaskRow("f" * 32, "m.t", [], {}, status="FAILED", attempts=1, finished_at=1.0, held_by="failed"),
        TaskRow("n" * 32, "m.t", [], {}),  # READY, held by nobody
        TaskRow("b" * 32, "m.t", [], {}, held_by="ready-holder"),
    ])
    assert store.holders() == {"ready-holder", "running-holder"}


def test_finding_holders_reads_no_finished_row(store):
    """The sweep (every 2 s) and the heartbeat ask for the holders: with a week of finished
    rows kept, a scan of the table cost 20 ms per 200,000 rows. Each select must go by index."""
    statements: list[str] = []
    db = store._connection()
    db.set_trace_callback(statements.append)
    try:
        store.holders()
    finally:
        db.set_trace_callback(None)
    assert statements
    with other_connection(store) as reader:
        for sql in statements:
            plan = " | ".join(step[-1] for step in reader.execute("EXPLAIN QUERY PLAN " + sql))
            assert "SCAN taskpool_task" not in plan, (sql, plan)
            assert "USING INDEX" in plan, (sql, plan)


def hold_write_lock(store: SqliteStore) -> sqlite3.Connection:
    """Another process's writer in the middle of a transaction."""
    holder = other_connection(store)
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("INSERT INTO taskpool_supervisor VALUES ('s', 'h', 1, 0, 0)")
    return holder


def test_a_batch_waits_for_another_writer_retrying_at_a_fine_grain(store, monkeypatch):
    """Not SQLite's busy handler (1, 2, 5, 10 ms... sleeps): retries from 0.1 ms, doubling up
    to 2 ms, so a writer meeting a short transaction waits about as long as it lasts."""
    holder = hold_write_lock(store)
    delays: list[float] = []
    real_sleep = sqlite_store.time.sleep

    def sleep(seconds: float) -> None:
        delays.append(seconds)
        if len(delays) == 12:
            holder.execute("COMMIT")  # released while the batch keeps trying
        real_sleep(seconds)

    monkeypatch.setattr(sqlite_store.time, "sleep", sleep)
    try:
        store.record([TaskRow("m" * 32, "m.f", [], {})])
    finally:
        holder.close()
    assert delays[:5] == [0.0001, 0.0002, 0.0004, 0.0008, 0.0016]
    assert max(delays) == sqlite_store.LOCK_RETRY_MAX and len(delays) >= 12
    assert store.fetch("m" * 32) is not None and [r.supervisor_id for r in store.supervisors()] == ["s"]


def test_a_database_locked_past_the_busy_timeout_is_a_store_error(store, monkeypatch):
    monkeypatch.setattr(sqlite_store, "BUSY_TIMEOUT_MS", 100)
    holder = hold_write_lock(store)
    try:
        with pytest.raises(StoreError, match="locked"):
            store.insert([TaskRow("n" * 32, "m.f", [], {})])
        with pytest.raises(StoreError, match="locked"):
            store.record([TaskRow("o" * 32, "m.f", [], {})])
        assert store.fetch("n" * 32) is None  # readers still read meanwhile
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    store.insert([TaskRow("n" * 32, "m.f", [], {})])  # and the connection is usable after
    assert store.fetch("n" * 32) is not None


def test_an_error_other_than_locked_is_not_retried(store, monkeypatch):
    monkeypatch.setattr(sqlite_store.time, "sleep", lambda s: pytest.fail("retried a non-lock error"))
    store.insert([TaskRow("p" * 32, "m.f", [], {})])
    with pytest.raises(StoreError, match="UNIQUE"):
        store.insert([TaskRow("p" * 32, "m.f", [], {})])


def test_clients_leave_wal_checkpoints_to_the_recorder(store):
    """A checkpoint costs a commit ~3 ms; the recorder's connections run them, a client's
    only past ten times the log (when no recorder runs)."""
    client_db = store._connection()
    assert client_db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == sqlite_store.CLIENT_AUTOCHECKPOINT
    store.serve_as_recorder()
    assert client_db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == sqlite_store.RECORDER_AUTOCHECKPOINT
    seen = []
    other_thread = threading.Thread(
        target=lambda: seen.append(store._connection().execute("PRAGMA wal_autocheckpoint").fetchone()[0]))
    other_thread.start()
    other_thread.join(10)
    assert seen == [sqlite_store.RECORDER_AUTOCHECKPOINT]
    assert sqlite_store.CLIENT_AUTOCHECKPOINT >= 10 * sqlite_store.RECORDER_AUTOCHECKPOINT


@pytest.mark.parametrize("code", [sqlite3.SQLITE_BUSY, 261, 517, 773])  # BUSY, _RECOVERY, _SNAPSHOT, _TIMEOUT
def test_every_kind_of_busy_is_retried(code, monkeypatch):
    monkeypatch.setattr(sqlite_store.time, "sleep", lambda s: None)
    attempts = []

    def statement() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            exc = sqlite3.OperationalError("database is locked")
            exc.sqlite_errorcode = code
            raise exc
        return "done"

    assert sqlite_store._until_unlocked(statement) == "done" and len(attempts) == 3


def test_a_log_past_its_limit_is_checkpointed_and_emptied(store):
    """Passive checkpoints never catch up while writers follow each other without a pause;
    a connection that finds the log past its limit empties it (TRUNCATE checkpoint)."""
    wal = store.path + "-wal"
    reader = other_connection(store)
    store.wal_check_every = 1  # look after every commit
    for i in range(3):
        store.insert([TaskRow(f"{i}" * 32, "m.f", [], {})])
    assert os.path.getsize(wal) > 0  # under the limit: left as it is
    store.wal_limit = 0
    store.insert([TaskRow("q" * 32, "m.f", [], {})])
    assert os.path.getsize(wal) == 0
    assert reader.execute("SELECT COUNT(*) FROM taskpool_task").fetchone()[0] == 4  # all of it in the database
    reader.close()
    assert store._connection().execute("PRAGMA busy_timeout").fetchone()[0] == 0  # back to no busy handler


def test_the_recorder_looks_at_the_log_after_every_batch(store):
    assert store.wal_check_every == sqlite_store.CLIENT_WAL_CHECK_EVERY > 1
    store.serve_as_recorder()
    assert store.wal_check_every == 1


def test_a_log_that_cannot_be_emptied_is_left_alone_for_a_while(store, monkeypatch):
    """A reader that keeps its snapshot stops the truncation; the next try waits
    WAL_RETRY_AFTER commits, not one: each try holds writers off for TRUNCATE_WAIT_MS."""
    monkeypatch.setattr(sqlite_store, "TRUNCATE_WAIT_MS", 10)
    store.wal_check_every = 1
    store.insert([TaskRow("r" * 32, "m.f", [], {})])
    reader = other_connection(store)
    reader.execute("BEGIN")
    reader.execute("SELECT COUNT(*) FROM taskpool_task").fetchone()  # holds a snapshot of the log
    store.wal_limit = 0
    tries = []
    real = store._truncate_wal
    monkeypatch.setattr(store, "_truncate_wal", lambda db: tries.append(1) or real(db))
    for i in range(5):
        store.insert([TaskRow(f"s{i}" + "s" * 30, "m.f", [], {})])
    reader.execute("COMMIT")
    reader.close()
    assert tries == [1]  # failed once, then not again within WAL_RETRY_AFTER commits
