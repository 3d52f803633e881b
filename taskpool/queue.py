"""The ready queue (higher priority first, FIFO within a priority) and the delay heap.

Both hold task ids only; the ledger owns the task state. Removal is lazy: a
cancelled id stays in the heap until popped, and ``pop`` skips ids the caller's
``is_ready`` predicate rejects. Counts are kept exactly so stats stay true.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable


class ReadyQueue:
    __slots__ = ("_heap", "_seq", "_live")

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, str]] = []
        self._seq = itertools.count()
        self._live: set[str] = set()

    def push(self, task_id: str, priority: int) -> None:
        if task_id in self._live:
            return
        self._live.add(task_id)
        heapq.heappush(self._heap, (-priority, next(self._seq), task_id))

    def discard(self, task_id: str) -> bool:
        """Forget ``task_id``; its heap entry is skipped when it surfaces."""
        if task_id in self._live:
            self._live.remove(task_id)
            return True
        return False

    def pop(self) -> str | None:
        heap = self._heap
        while heap:
            task_id = heapq.heappop(heap)[2]
            if task_id in self._live:
                self._live.remove(task_id)
                return task_id
        return None

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, task_id: str) -> bool:
        return task_id in self._live


class DelayHeap:
    """Tasks waiting for their ``run_after``, keyed on a monotonic due time."""

    __slots__ = ("_heap", "_seq", "_live")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, str]] = []
        self._seq = itertools.count()
        self._live: set[str] = set()

    def push(self, task_id: str, due: float) -> None:
        self._live.add(task_id)
        heapq.heappush(self._heap, (due, next(self._seq), task_id))

    def discard(self, task_id: str) -> bool:
        if task_id in self._live:
            self._live.remove(task_id)
            return True
        return False

    def pop_due(self, now: float, accept: Callable[[str], bool] = lambda _: True) -> list[str]:
        """Ids whose due time has come, in due order."""
        heap, due = self._heap, []
        while heap and heap[0][0] <= now:
            task_id = heapq.heappop(heap)[2]
            if task_id in self._live:
                self._live.remove(task_id)
                if accept(task_id):
                    due.append(task_id)
        return due

    def next_due(self) -> float | None:
        heap = self._heap
        while heap and heap[0][2] not in self._live:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def __len__(self) -> int:
        return len(self._live)
