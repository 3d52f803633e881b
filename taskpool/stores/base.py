"""The store interface: what the client, the recorder and the sweeps ask of a store.

Writers, by design: the client inserts READY rows (``insert``); the recorder is
the only process that changes a row's status afterwards (``record``, ``recover``,
``claim``, ``purge``). ``record`` never overwrites a final status, which is how
"exactly one final status per task" holds even when an event is delivered twice.
All values are JSON-compatible; no pickle anywhere.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

from ..protocol import CANCELLED, FAILED, READY
from ..records import Factory, field_names, record

TYPE_CHECKING = False  # typing stays unimported at run time (docs/performance.md, idle RSS)
if TYPE_CHECKING:
    from typing import Any

#: Columns that change after insert; an update carries all of them (latest wins).
MUTABLE = (
    "priority", "queue", "max_attempts", "timeout",  # resolved by the supervisor from the task's defaults
    "status", "attempts", "run_after", "started_at", "finished_at", "last_attempted_at",
    "worker_ids", "progress", "progress_message", "result", "errors", "held_by",
)


@record
class TaskRow:
    task_id: str
    name: str
    args: list
    kwargs: dict
    queue: str = "default"
    priority: int = 0
    run_after: float | None = None
    timeout: float | None = None
    max_attempts: int = 3
    status: str = READY
    attempts: int = 0
    enqueued_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    last_attempted_at: float | None = None
    worker_ids: list = Factory(list)
    progress: float | None = None
    progress_message: str | None = None
    result: Any = None
    errors: list = Factory(list)
    held_by: str | None = None

    def as_dict(self) -> dict:
        """Every column as a dict, shallow: list values are shared with the row."""
        return dict(zip(_ROW_FIELDS, _row_values(self), strict=True))


_ROW_FIELDS = field_names(TaskRow)
_row_values = TaskRow._record_values


@record
class SupervisorRecord:
    supervisor_id: str
    host: str
    pid: int
    started_at: float
    heartbeat_at: float


@record
class Recovery:
    """What a recovery sweep did: rows put back to READY, and rows failed for good."""

    requeued: list[str] = Factory(list)
    failed: list[str] = Factory(list)


def orphan(record: Any, finished_at: Any) -> bool:
    """Settle a RUNNING row whose supervisor is gone (a TaskRow or a model instance):
    another attempt if it has one left (True), else FAILED. The error names the supervisor."""
    record.errors = [*record.errors, {
        "type": "taskpool.errors.WorkerLost",
        "message": f"supervisor {record.held_by} stopped while the task was running",
        "traceback": "",
    }]
    record.held_by = None
    if record.attempts < record.max_attempts:
        record.status = READY
        return True
    record.status, record.finished_at = FAILED, finished_at
    return False


class Store(ABC):
    """One implementation per backend; see stores/sqlite.py for the reference one."""

    durable = True
    name = "abstract"
    spool = ""  # the spool directory a file-based store lives in ("" for others)

    @classmethod
    @abstractmethod
    def open(cls, spool: str) -> Store: ...

    # -- client side ---------------------------------------------------------

    @abstractmethod
    def insert(self, rows: Sequence[TaskRow]) -> None:
        """Write new READY rows in one transaction (all or none)."""

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once the rows just inserted are committed (here: at once)."""
        callback()

    @abstractmethod
    def fetch(self, task_id: str) -> TaskRow | None: ...

    @abstractmethod
    def cancel_ready(self, task_id: str, now: float, held_by: str | None) -> bool:
        """CANCELLED if still READY and still held by ``held_by`` (the caller checked that
        holder is gone, or None); True when it was."""

    # -- recorder side -------------------------------------------------------

    @abstractmethod
    def record(self, rows: Sequence[TaskRow], held: Sequence[str] = (), holder: str | None = None) -> None:
        """Upsert the mutable columns of each row, and mark the rows ``held`` (stored submits
        the supervisor accepted) held by ``holder`` if still READY: one transaction; final
        stays final."""

    @abstractmethod
    def claim(self, supervisor_id: str, limit: int, horizon: float) -> list[TaskRow]:
        """READY rows held by nobody (run_after before ``horizon``), highest priority
        first then oldest; marks them held by ``supervisor_id``."""

    @abstractmethod
    def recover(self, supervisor_id: str, gone: Sequence[str], now: float) -> Recovery:
        """Release rows held by supervisors that are gone: READY rows become unheld;
        RUNNING rows are re-run (an attempt spent) or FAILED when out of attempts."""

    @abstractmethod
    def release(self, supervisor_id: str) -> int:
        """Un-hold READY rows held by ``supervisor_id`` (after a claim whose answer was lost)."""

    @abstractmethod
    def holders(self) -> set[str]:
        """Supervisor ids that hold READY or RUNNING rows."""

    @abstractmethod
    def heartbeat(self, record: SupervisorRecord) -> None: ...

    @abstractmethod
    def supervisors(self) -> list[SupervisorRecord]: ...

    @abstractmethod
    def forget_supervisors(self, ids: Sequence[str]) -> None: ...

    @abstractmethod
    def purge(self, finished_before: float, limit: int) -> int:
        """Delete up to ``limit`` final rows finished before the given time."""

    @abstractmethod
    def counts(self) -> dict[str, int]:
        """Rows per status (for stats and tests)."""

    def serve_as_recorder(self) -> None:  # noqa: B027 - optional
        """Called once in the recorder's process after ``open``: take on the store's upkeep
        that no web request should pay for (the sqlite store's WAL checkpoints)."""

    def close(self) -> None:  # noqa: B027 - optional
        pass


FINAL = ("SUCCESSFUL", "FAILED", CANCELLED)
