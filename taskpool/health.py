"""Cheap process metrics for the stats reply: RSS and CPU per worker.

Read from ``/proc/<pid>/stat`` and ``statm`` on Linux (the files psutil reads there),
through psutil elsewhere. The CPU percentage compares each process's CPU time with the
previous sample's (as ``psutil.Process.cpu_percent(interval=None)`` does); samples are
taken at most once a second however often stats are asked for; never a blocking call.

Not psutil on Linux, and psutil imported only at the first sample elsewhere: the
supervisor imports this module before it forks, and every module loaded then counts
again in the RSS of each worker and the recorder (psutil: ~1.4 MiB per process).
"""

from __future__ import annotations

import os
import time

TYPE_CHECKING = False  # typing stays unimported at run time (docs/performance.md, idle RSS)
if TYPE_CHECKING:
    from typing import Any

SAMPLE_INTERVAL = 1.0
_PROC = os.path.exists("/proc/self/statm")
_PAGE = os.sysconf("SC_PAGE_SIZE") if _PROC else 0
_TICKS = os.sysconf("SC_CLK_TCK") if _PROC else 0


class ProcessSampler:
    def __init__(self) -> None:
        self._cpu: dict[int, tuple[float, float]] = {}  # pid -> (CPU seconds, monotonic) at its last sample
        self._procs: dict[int, Any] = {}  # pid -> psutil.Process, where there is no /proc
        self._last: dict[int, tuple[int, float]] = {}
        self._sampled_at = 0.0

    def sample(self, pids: list[int]) -> dict[int, tuple[int, float]]:
        """pid -> (rss bytes, cpu percent); refreshed at most once a second."""
        now = time.monotonic()
        wanted = set(pids)
        if now - self._sampled_at >= SAMPLE_INTERVAL or not wanted <= set(self._last):
            read = self._read_proc if _PROC else self._read_psutil
            self._sampled_at = now
            for known in (self._cpu, self._procs):
                for pid in [p for p in known if p not in wanted]:
                    del known[pid]
            self._last = {pid: read(pid) for pid in wanted}
        return self._last

    def _read_proc(self, pid: int) -> tuple[int, float]:
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                stat = fh.read()
            with open(f"/proc/{pid}/statm", "rb") as fh:
                statm = fh.read()
        except (FileNotFoundError, ProcessLookupError):  # gone
            self._cpu.pop(pid, None)
            return 0, 0.0
        except OSError:  # unreadable for now (out of descriptors): no figure, no failure
            return 0, 0.0
        fields = stat[stat.rindex(b")") + 2 :].split()  # after "pid (comm) ": state, ppid, ...
        if fields[0] == b"Z":  # exited, not yet reaped
            self._cpu.pop(pid, None)
            return 0, 0.0
        cpu = (int(fields[11]) + int(fields[12])) / _TICKS  # utime + stime
        now = time.monotonic()
        before = self._cpu.get(pid)
        self._cpu[pid] = (cpu, now)
        percent = 0.0 if before is None or now <= before[1] else round((cpu - before[0]) / (now - before[1]) * 100, 1)
        return int(statm.split()[1]) * _PAGE, percent

    def _read_psutil(self, pid: int) -> tuple[int, float]:
        try:
            import psutil
        except (ImportError, OSError):  # e.g. out of descriptors at the first sample: no figures yet
            return 0, 0.0
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
        except OSError:  # unreadable for now (out of descriptors): no figure, no failure
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
