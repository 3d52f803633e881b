"""The ``django`` store: task rows in the project's database, through the ORM.

The same interface as taskpool's sqlite store (taskpool/stores/base.py). ``insert``
runs in the caller's transaction, so a task exists if and only if the view's
transaction commits; ``after_commit`` defers the supervisor notification to
``transaction.on_commit``. Every other method is the recorder's and runs in its
own transaction. Times are epoch floats in TaskRow and aware UTC datetimes in
the database. Claims use ``select_for_update(skip_locked=True)`` where the
database supports it and only take rows nobody holds, so two supervisors never claim
the same row; but a supervisor on another host is judged only by its heartbeat
(30 s), a sweep can claim a row just submitted to another supervisor, and a client
cannot cancel a row another host holds: run one supervisor per database for now
(docs/operations.md, "Several supervisors on one store").
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable, Sequence
from operator import attrgetter

from django.db import DatabaseError, connection, transaction

from taskpool.errors import StoreError
from taskpool.protocol import READY, RUNNING
from taskpool.records import field_names
from taskpool.stores.base import MUTABLE, Recovery, Store, SupervisorRecord, TaskRow, orphan

log = logging.getLogger("taskpool.store")

TIME_FIELDS = ("run_after", "enqueued_at", "started_at", "finished_at", "last_attempted_at")
FIELDS = field_names(TaskRow)
UPSERT_VENDORS = frozenset({"sqlite", "postgresql"})
FINAL_SQL = "('SUCCESSFUL', 'FAILED', 'CANCELLED')"


def to_datetime(value: float | None) -> dt.datetime | None:
    return None if value is None else dt.datetime.fromtimestamp(value, tz=dt.UTC)


def to_epoch(value: dt.datetime | None) -> float | None:
    return None if value is None else value.timestamp()


_row_values = attrgetter(*FIELDS)


def _model_values(row: TaskRow, names: Sequence[str]) -> dict:
    return {n: (to_datetime(getattr(row, n)) if n in TIME_FIELDS else getattr(row, n)) for n in names}


class DjangoStore(Store):
    name = "django"

    def __init__(self) -> None:
        from .models import SupervisorHeartbeat, TaskRecord

        self.records = TaskRecord.objects
        self.model = TaskRecord
        self.heartbeats = SupervisorHeartbeat.objects
        self._statements: tuple[str, str, str] | None = None
        self._converters: list | None = None
        self._plain: list | None = None

    @classmethod
    def open(cls, spool: str) -> DjangoStore:
        from .runtime import ensure_django

        ensure_django()  # in the recorder, the first thing that needs Django
        return cls()

    def _row(self, record) -> TaskRow:
        return TaskRow(**{n: (to_epoch(getattr(record, n)) if n in TIME_FIELDS else getattr(record, n)) for n in FIELDS})

    def _guard(self, what: str, work: Callable):
        try:
            return work()
        except DatabaseError as exc:
            raise StoreError(f"task table ({connection.vendor} database): {what}: {exc}") from None

    # -- client side -----------------------------------------------------------

    def insert(self, rows: Sequence[TaskRow]) -> None:
        def work() -> None:
            with transaction.atomic():  # joins the caller's transaction when there is one
                if connection.vendor in UPSERT_VENDORS:  # plain SQL: bulk_create's compiler costs more than the insert
                    with connection.cursor() as cursor:
                        cursor.executemany(self._sql()[0], self._params(rows))
                else:
                    self.model.objects.bulk_create([self.model(**_model_values(r, FIELDS)) for r in rows])

        self._guard("insert", work)

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once the caller's transaction commits (now in autocommit)."""
        if connection.in_atomic_block:
            transaction.on_commit(lambda: _logged(callback))
        else:
            callback()

    def fetch(self, task_id: str) -> TaskRow | None:
        record = self._guard("fetch", lambda: self.records.filter(pk=task_id).first())
        return None if record is None else self._row(record)

    def cancel_ready(self, task_id: str, now: float, held_by: str | None) -> bool:
        return self._guard("cancel", lambda: self.records.filter(pk=task_id, status=READY, held_by=held_by).update(
            status="CANCELLED", finished_at=to_datetime(now)) == 1)

    # -- recorder side -----------------------------------------------------------

    def record(self, rows: Sequence[TaskRow], held: Sequence[str] = (), holder: str | None = None) -> None:
        if connection.vendor in UPSERT_VENDORS:
            self._guard("record", lambda: self._upsert(rows, held, holder))
            return

        def work() -> None:
            with transaction.atomic():
                by_id = {r.task_id: r for r in rows}
                present = dict(self.records.filter(pk__in=by_id).values_list("task_id", "status"))
                new = [self.model(**_model_values(r, FIELDS)) for i, r in by_id.items() if i not in present]
                self.model.objects.bulk_create(new, ignore_conflicts=True)
                open_ids = [i for i, status in present.items() if status in (READY, RUNNING)]
                updates = []
                for record in self.records.filter(pk__in=open_ids).select_for_update():
                    for name, value in _model_values(by_id[record.task_id], MUTABLE).items():
                        setattr(record, name, value)
                    updates.append(record)
                self.model.objects.bulk_update(updates, list(MUTABLE))
                if held:
                    self.records.filter(pk__in=held, status=READY).update(held_by=holder)

        self._guard("record", work)

    def _sql(self) -> tuple[str, str, str]:
        """(INSERT, INSERT .. ON CONFLICT DO UPDATE, the UPDATE of held_by that claims a stored
        submit) for a whole row; SQLite and PostgreSQL speak the same dialect. Built once per
        process."""
        if self._statements is None:
            meta, quote = self.model._meta, connection.ops.quote_name
            table = quote(meta.db_table)
            columns = ", ".join(quote(meta.get_field(n).column) for n in FIELDS)
            insert = f"INSERT INTO {table} ({columns}) VALUES ({', '.join(['%s'] * len(FIELDS))})"
            mutable = [quote(meta.get_field(n).column) for n in MUTABLE]
            updates = ", ".join(f"{column} = excluded.{column}" for column in mutable)
            upsert = (f"{insert} ON CONFLICT ({quote(meta.pk.column)}) DO UPDATE SET {updates} "
                      f"WHERE {table}.{quote(meta.get_field('status').column)} NOT IN {FINAL_SQL}")
            hold = (f"UPDATE {table} SET {quote(meta.get_field('held_by').column)} = %s "
                    f"WHERE {quote(meta.pk.column)} = %s AND {quote(meta.get_field('status').column)} = '{READY}'")
            self._statements = (insert, upsert, hold)
        return self._statements

    def _params(self, rows: Sequence[TaskRow]) -> list[list]:
        """Row values as the database driver takes them: JSON and time columns through their
        Django field (each backend adapts them its own way), the rest as they are."""
        if self._converters is None:
            fields = [self.model._meta.get_field(n) for n in FIELDS]
            self._converters = [
                (lambda v, f=f: f.get_db_prep_save(v, connection)) if n in TIME_FIELDS or f.get_internal_type() == "JSONField"
                else None
                for n, f in zip(FIELDS, fields, strict=True)
            ]
            self._plain = self._plain_converters()
        plain = self._plain
        if plain is not None:  # the same values, without Django's per-field machinery
            return [[v if c is None else c(v) for v, c in zip(_row_values(row), plain, strict=True)] for row in rows]
        converters = self._converters
        params = []
        for row in rows:
            values = _model_values(row, FIELDS)
            params.append([v if c is None else c(v) for v, c in zip(values.values(), converters, strict=True)])
        return params

    def _plain_converters(self) -> list | None:
        """On SQLite, converters in plain Python (a time column as Django's text, a JSON column
        as json.dumps) for the TaskRow values, used only if they give exactly what Django's
        fields give for a probe row. Django's way took ~45 us a row, most of the client's
        submit_many and of the recorder's batches, which hold the write lock meanwhile."""
        if connection.vendor != "sqlite":
            return None

        def when(value: float | None) -> str | None:
            return None if value is None else str(dt.datetime.fromtimestamp(value, tz=dt.UTC).replace(tzinfo=None))

        def as_json(value: object) -> str | None:
            return None if value is None else json.dumps(value)

        plain = [when if n in TIME_FIELDS else (as_json if c is not None else None)
                 for n, c in zip(FIELDS, self._converters or (), strict=True)]
        probes = [
            TaskRow("p1", "m.t", [1, "é", None], {"k": {"n": 1.5}}, "default", 0, 1700000000.25, None, 3,
                    result=None, errors=[], enqueued_at=1700000000.0),
            TaskRow("p2", "m.t", [], {}, "q", -5, None, 2.5, 1, status="SUCCESSFUL", attempts=1, enqueued_at=1.5e9,
                    started_at=1.5e9 + 0.000001, finished_at=1.5e9 + 2, last_attempted_at=1.5e9 + 1, worker_ids=[7],
                    progress=100.0, progress_message="ok", result={"a": [True, None]},
                    errors=[{"type": "x", "message": "m", "traceback": ""}], held_by="s"),
        ]
        converters = self._converters or []
        for probe in probes:
            django_values = _model_values(probe, FIELDS).values()
            django_way = [v if c is None else c(v) for v, c in zip(django_values, converters, strict=True)]
            if [v if c is None else c(v) for v, c in zip(_row_values(probe), plain, strict=True)] != django_way:
                log.info("task rows go through Django's field conversion (a faster path disagreed with it)")
                return None
        return plain

    def _upsert(self, rows: Sequence[TaskRow], held: Sequence[str] = (), holder: str | None = None) -> None:
        """One INSERT .. ON CONFLICT DO UPDATE per row, never touching a final row. A write
        from the first statement on, so on SQLite the transaction takes the write lock at
        once (waiting its busy timeout) instead of reading first and failing with
        "database is locked" when another connection commits in between; and no
        CASE-per-column bulk_update."""
        params = self._params(rows) if rows else []  # before the transaction: on SQLite it holds the write lock
        holds = [(holder, task_id) for task_id in held]
        _, upsert, hold = self._sql()
        with transaction.atomic(), connection.cursor() as cursor:
            if params:
                cursor.executemany(upsert, params)
            if holds:
                cursor.executemany(hold, holds)

    def _write_first(self) -> None:
        """On SQLite, take the write lock before reading (a no-op UPDATE does): a deferred
        transaction that reads and then writes fails at once, busy timeout or not, if
        another connection committed in between."""
        if connection.vendor == "sqlite":
            with connection.cursor() as cursor:
                cursor.execute(f"UPDATE {connection.ops.quote_name(self.model._meta.db_table)} SET status = status WHERE 0 = 1")

    def claim(self, supervisor_id: str, limit: int, horizon: float) -> list[TaskRow]:
        def work() -> list[TaskRow]:
            with transaction.atomic():
                self._write_first()
                candidates = self.records.due(horizon).filter(held_by__isnull=True).order_by("-priority", "enqueued_at")
                if connection.features.has_select_for_update_skip_locked:
                    candidates = candidates.select_for_update(skip_locked=True)
                ids = list(candidates.values_list("task_id", flat=True)[:limit])
                self.records.filter(pk__in=ids, held_by__isnull=True).update(held_by=supervisor_id)
                claimed = self.records.filter(pk__in=ids, held_by=supervisor_id).order_by("-priority", "enqueued_at")
                return [self._row(r) for r in claimed]

        return self._guard("claim", work)

    def recover(self, supervisor_id: str, gone: Sequence[str], now: float) -> Recovery:
        report = Recovery()
        if not gone:
            return report

        def work() -> None:
            with transaction.atomic():
                self._write_first()
                self.records.filter(status=READY, held_by__in=gone).update(held_by=None)
                for record in self.records.filter(status=RUNNING, held_by__in=gone).select_for_update():
                    (report.requeued if orphan(record, to_datetime(now)) else report.failed).append(record.task_id)
                    record.save(update_fields=["errors", "held_by", "status", "finished_at"])

        self._guard("recover", work)
        return report

    def release(self, supervisor_id: str) -> int:
        return self._guard("release", lambda: self.records.filter(status=READY, held_by=supervisor_id).update(held_by=None))

    def holders(self) -> set[str]:
        found = self.records.filter(status__in=(READY, RUNNING), held_by__isnull=False).values_list("held_by", flat=True)
        return set(self._guard("holders", lambda: list(found.distinct())))

    def heartbeat(self, record: SupervisorRecord) -> None:
        self._guard("heartbeat", lambda: self.heartbeats.update_or_create(
            supervisor_id=record.supervisor_id,
            defaults={"host": record.host, "pid": record.pid, "started_at": record.started_at,
                      "heartbeat_at": record.heartbeat_at},
        ))

    def supervisors(self) -> list[SupervisorRecord]:
        rows = self._guard("supervisors", lambda: list(self.heartbeats.all()))
        return [SupervisorRecord(r.supervisor_id, r.host, r.pid, r.started_at, r.heartbeat_at) for r in rows]

    def forget_supervisors(self, ids: Sequence[str]) -> None:
        self._guard("forget", lambda: self.heartbeats.filter(supervisor_id__in=list(ids)).delete())

    def purge(self, finished_before: float, limit: int) -> int:
        def work() -> int:
            with transaction.atomic():
                self._write_first()
                return self._purge(finished_before, limit)

        return self._guard("purge", work)

    def _purge(self, finished_before: float, limit: int) -> int:
        ids = list(self.records.finished().filter(finished_at__lt=to_datetime(finished_before))
                   .values_list("task_id", flat=True)[:limit])
        return self.records.filter(pk__in=ids).delete()[0]

    def counts(self) -> dict[str, int]:
        from django.db.models import Count

        rows = self._guard("counts", lambda: list(self.records.order_by().values("status").annotate(n=Count("pk"))))
        return {r["status"]: r["n"] for r in rows}

    def close(self) -> None:
        connection.close()


def _logged(callback: Callable[[], None]) -> None:
    """Deferred notifications must not break the request that committed."""
    try:
        callback()
    except Exception:
        log.exception("taskpool: notifying the supervisor after commit failed; the task row is stored")
