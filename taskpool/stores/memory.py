"""The ``memory`` store: nothing is persisted; the supervisor's ledger is the only state.

An explicit opt-in for pure compute pools and benchmarks of the core: ``submit()``
needs a running supervisor, and tasks in flight are gone if it dies.
"""

from __future__ import annotations

from collections.abc import Sequence

from .base import Recovery, Store, SupervisorRecord, TaskRow


class MemoryStore(Store):
    durable = False
    name = "memory"

    @classmethod
    def open(cls, spool: str) -> MemoryStore:
        return cls()

    def insert(self, rows: Sequence[TaskRow]) -> None:
        pass

    def fetch(self, task_id: str) -> TaskRow | None:
        return None

    def cancel_ready(self, task_id: str, now: float, held_by: str | None) -> bool:
        return False

    def record(self, rows: Sequence[TaskRow], held: Sequence[str] = (), holder: str | None = None) -> None:
        pass

    def claim(self, supervisor_id: str, limit: int, horizon: float) -> list[TaskRow]:
        return []

    def recover(self, supervisor_id: str, gone: Sequence[str], now: float) -> Recovery:
        return Recovery()

    def release(self, supervisor_id: str) -> int:
        return 0

    def holders(self) -> set[str]:
        return set()

    def heartbeat(self, record: SupervisorRecord) -> None:
        pass

    def supervisors(self) -> list[SupervisorRecord]:
        return []

    def forget_supervisors(self, ids: Sequence[str]) -> None:
        pass

    def purge(self, finished_before: float, limit: int) -> int:
        return 0

    def counts(self) -> dict[str, int]:
        return {}
