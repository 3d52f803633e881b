"""The django store writes rows through plain converters on SQLite; what it stores must be
exactly what Django's fields store, and read back through the ORM unchanged."""

from __future__ import annotations

import random

import pytest
from django.db import connection

from django_integration.store import FIELDS, DjangoStore, _model_values
from taskpool.stores.base import TaskRow


def random_row(rng: random.Random, i: int) -> TaskRow:
    maybe_time = lambda: None if rng.random() < 0.3 else rng.uniform(0, 4e9)  # noqa: E731
    value = rng.choice([None, 1, -2.5, "é\u2603", [1, [2, None]], {"k": {"n": True}}, [], {}])
    return TaskRow(f"t{i}", "mod.task", [value, i], {"v": value}, rng.choice(["default", "q"]), rng.randint(-100, 100),
                   maybe_time(), rng.choice([None, 1.5]), rng.randint(1, 5), rng.choice(["READY", "SUCCESSFUL"]),
                   rng.randint(0, 5), rng.uniform(0, 4e9), maybe_time(), maybe_time(), maybe_time(), [rng.randint(1, 9)],
                   rng.choice([None, 12.5]), rng.choice([None, "half"]), value, rng.choice([[], [{"type": "x"}]]),
                   rng.choice([None, "sup"]))


@pytest.mark.django_db
def test_plain_row_values_are_exactly_what_djangos_fields_give():
    store = DjangoStore()
    rng = random.Random(7)
    rows = [random_row(rng, i) for i in range(300)]
    fast = store._params(rows)
    assert store._plain is not None, "SQLite should take the plain path"
    django_way = [[v if c is None else c(v) for v, c in zip(_model_values(r, FIELDS).values(), store._converters, strict=True)]
                  for r in rows]
    assert fast == django_way


@pytest.mark.django_db(transaction=True)
def test_rows_written_the_plain_way_read_back_unchanged():
    assert connection.vendor == "sqlite"
    store = DjangoStore()
    rng = random.Random(3)
    rows = [random_row(rng, i) for i in range(50)]
    store.insert(rows)
    for row in rows:
        back = store.fetch(row.task_id)
        assert back is not None
        for name in FIELDS:
            want, got = getattr(row, name), getattr(back, name)
            if isinstance(want, float) and name.endswith(("_at", "after")):
                assert got == pytest.approx(want, abs=1e-5), name
            else:
                assert got == want, name


@pytest.mark.django_db(transaction=True)
def test_record_holds_ready_rows_and_leaves_final_ones_alone():
    store = DjangoStore()
    store.insert([TaskRow("ready", "m.t", [1], {}, enqueued_at=1.0), TaskRow("done", "m.t", [], {}, enqueued_at=1.0)])
    store.record([TaskRow("done", "m.t", [], {}, status="SUCCESSFUL", attempts=1, result=3, enqueued_at=1.0)])
    store.record([], held=["ready", "done", "missing"], holder="sup")
    assert (store.fetch("ready").status, store.fetch("ready").held_by) == ("READY", "sup")
    assert (store.fetch("done").status, store.fetch("done").held_by) == ("SUCCESSFUL", None)
    assert store.fetch("missing") is None
