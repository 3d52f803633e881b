"""Cheap process metrics for the stats reply: RSS and CPU per worker, via psutil.

One long-lived ``psutil.Process`` per pid (so ``cpu_percent(interval=None)`` has a
previous sample to compare with), sampled at most once a second however often
stats are asked for; never a blocking call.
"""

from __future__ import annotations

import time

import psutil

SAMPLE_INTERVAL = 1.0


class ProcessSampler:
    def __init__(self) -> None:
        self._procs: dict[int, psutil.Process] = {}
        self._last: dict[int, tuple[int, float]] = {}
        self._sampled_at = 0.0

    def sample(self, pids: list[int]) -> dict[int, tuple[int, float]]:
        """pid -> (rss bytes, cpu percent); refreshed at most once a second."""
        now = time.monotonic()
        wanted = set(pids)
        if now - self._sampled_at >= SAMPLE_INTERVAL or not wanted <= set(self._last):
            self._sampled_at = now
            for pid in list(self._procs):
                if pid not in wanted:
                    del self._procs[pid]
            self._last = {pid: self._read(pid) for pid in wanted}
        return self._last

    def _read(self, pid: int) -> tuple[int, float]:
        proc = self._procs.get(pid)
        try:
            if proc is None:
                proc = self._procs[pid] = psutil.Process(pid)
                proc.cpu_percent(None)
            with proc.oneshot():
                return proc.memory_info().rss, proc.cpu_percent(None)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            self._procs.pop(pid, None)
            return 0, 0.0
