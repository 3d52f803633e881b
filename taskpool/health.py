"""Cheap process metrics for the stats reply: RSS and CPU per worker, via psutil.

One long-lived ``psutil.Process`` per pid (so ``cpu_percent(interval=None)`` has a
previous sample to compare with), sampled at most once a second however often
stats are asked for; never a blocking call.
"""

from __future__ import annotations

import os
import time
from typing import Any

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
        except OSError:  # /proc unreadable for now (out of descriptors): no figure, no failure
            return 0, 0.0


def build_stats(sup: Any, version: str) -> dict:
    """The STATS reply: the supervisor, each worker (with psutil figures), queue, counters."""
    sched = sup.scheduler
    workers = sorted(sup.workers, key=lambda w: (w.generation, w.wid))
    metrics = sup.sampler.sample([os.getpid(), *(w.pid for w in workers)])
    rows = []
    for w in workers:
        rss, cpu = metrics.get(w.pid, (0, 0.0))
        task = sup.scheduler.ledger.active.get(w.task_id) if w.task_id else None
        rows.append({
            "wid": w.wid, "pid": w.pid, "generation": w.generation, "state": w.state.value,
            "task_id": w.task_id, "task_name": task.name if task else None,
            "progress": task.progress if task else None, "tasks_done": w.tasks_done,
            "queued": len(w.queued),
            "rss": rss, "cpu_percent": cpu, "age": round(time.monotonic() - w.started, 3),
        })
    own_rss, own_cpu = metrics.get(os.getpid(), (0, 0.0))
    return {
        "pid": os.getpid(),
        "version": version,
        "uptime": round(time.monotonic() - sup.started_mono, 3),
        "started_at": sup.started_wall,
        "generation": sup.workers.generation,
        "phase": sup.phase,
        "socket": sup.socket_path,
        "target_workers": sup.workers.target,
        "rss": own_rss,
        "cpu_percent": own_cpu,
        "workers": rows,
        "queue": {"ready": len(sched.ready), "delayed": len(sched.delayed), "running": sup.workers.busy()},
        "counters": {**sched.ledger.counters, "timeouts": sched.timeouts, **sup.counters},
        "known_tasks": sorted(sched.task_defaults),
        "supervisor_id": sup.supervisor_id,
        "store": sup.config.store,
        "recorder": sup.recorder.stats(time.monotonic()) if sup.recorder is not None else None,
    }
