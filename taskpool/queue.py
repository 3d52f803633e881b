"""The ready queue (higher priority first, FIFO within a priority) and the delay heap.

Both hold task ids only; the ledger owns the task state. Removal is lazy: a
discarded id's heap entry stays until it surfaces and is skipped then. Each entry
carries a sequence number and only the newest entry of an id is live, so an id
pushed again after a discard takes its new place. Counts are exact.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable


class _LazyHeap:
    __slots__ = ("_heap", "_seq", "_live")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, str]] = []
        self._seq = itertools.count()
        self._live: dict[str, int] = {}  # task id -> sequence number of its live entry

    def _push(self, task_id: str, key: float) -> None:
        seq = next(self._seq)
        self._live[task_id] = seq
        heapq.heappush(self._heap, (key, seq, task_id))

    def _is_live(self, entry: tuple[float, int, str]) -> bool:
        return self._live.get(entry[2]) == entry[1]

    def discard(self, task_id: str) -> bool:
        """Forget ``task_id``; its heap entry is skipped when it surfaces."""
        return self._live.pop(task_id, None) is not None

    def _drop_dead_top(self) -> None:
        heap = self._heap
        while heap and not self._is_live(heap[0]):
            heapq.heappop(heap)

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, task_id: str) -> bool:
        return task_id in self._live


class ReadyQueue(_LazyHeap):
    __slots__ = ()

    def push(self, task_id: str, priority: int) -> None:
        if task_id not in self._live:
            self._push(task_id, -priority)

    def pop(self) -> str | None:
        self._drop_dead_top()
        if not self._heap:
            return None
        task_id = heapq.heappop(self._heap)[2]
        del self._live[task_id]
        return task_id


class DelayHeap(_LazyHeap):
    """Tasks waiting for their ``run_after``, keyed on a monotonic due time."""

    __slots__ = ()

    def push(self, task_id: str, due: float) -> None:
        self._push(task_id, due)

    def pop_due(self, now: float, accept: Callable[[str], bool] = lambda _: True) -> list[str]:
        """Ids whose due time has come, in due order."""
        due = []
        while True:
            self._drop_dead_top()
            if not self._heap or self._heap[0][0] > now:
                return due
            task_id = heapq.heappop(self._heap)[2]
            del self._live[task_id]
            if accept(task_id):
                due.append(task_id)

    def next_due(self) -> float | None:
        self._drop_dead_top()
        return self._heap[0][0] if self._heap else None
