"""Two JSON endpoints: the supervisor's health and one task's state.

``health/`` (``taskpool-health``)
    The supervisor's stats (``taskpool.stats()``: pid, uptime, phase, each worker's
    state, rss and cpu_percent, queue, counters, recorder) under ``"stats"``, with
    ``"healthy"`` and a list of ``"problems"``. HTTP 200 when healthy, 503 when the
    supervisor does not answer within ``TASKPOOL_HEALTH_TIMEOUT`` (1 s), is not
    running, has no live (idle or busy) worker, or its recorder is stuck: the
    oldest unwritten batch, or a store sweep under way, older than
    ``TASKPOOL_HEALTH_MAX_RECORDER_LAG`` (30 s), or no recorder process for longer
    than ``TASKPOOL_HEALTH_RECORDER_DOWN_AFTER`` (30 s, as the supervisor reports it
    in ``recorder.down_for``, or as this web process has seen it).
    Open by default: it is meant for a load balancer or monitor on the internal
    network. It shows pids, the socket path and task names, never arguments or
    results; ``TASKPOOL_HEALTH_ACCESS = "staff"`` restricts it to staff users.

``tasks/<id>/`` (``taskpool-task``)
    ``{"id", "name", "status", "final", "progress", "progress_message", "attempts",
    "result", "error"}``: ``result`` when SUCCESSFUL, ``error`` (the last error's
    ``type`` and ``message``, no traceback) when FAILED or CANCELLED, else null.
    Read from the supervisor (``TASKPOOL_TASK_TIMEOUT``, 1 s) and from the task
    table when the supervisor does not hold the task or does not answer. 404 for
    an unknown id. By default knowing the id is the permission
    (``TASKPOOL_TASK_ACCESS = "id"``): ids are random 128-bit values, so only a
    page that was given the id can poll it - the progress widget needs exactly
    this for anonymous visitors. The id is then a bearer secret: keep it out of
    shared links and logs, and send ``Referrer-Policy: same-origin`` (Django's
    default). ``"login"`` requires a signed-in user and ``"staff"`` a staff user;
    refused requests get a 403 JSON answer, not a redirect to the login page.

Both answers carry ``Cache-Control: no-store``. Neither view blocks longer than
its timeout (plus one primary-key query for the task view).
"""

from __future__ import annotations

import re
import threading
import time
from typing import Any

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from taskpool import client as taskpool_client
from taskpool.client import Client, TaskHandle
from taskpool.errors import RemoteError, SupervisorUnavailable, TaskNotFound, TaskpoolError
from taskpool.protocol import CANCELLED, FAILED, FINAL_STATUSES, SUCCESSFUL, StatsRequest

LIVE_WORKER_STATES = ("idle", "busy")
TASK_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
ACCESS_CHOICES = {"TASKPOOL_HEALTH_ACCESS": ("open", "staff"), "TASKPOOL_TASK_ACCESS": ("id", "login", "staff")}
DEFAULTS: dict[str, Any] = {
    "TASKPOOL_HEALTH_ACCESS": "open",
    "TASKPOOL_TASK_ACCESS": "id",
    "TASKPOOL_HEALTH_TIMEOUT": 1.0,
    "TASKPOOL_TASK_TIMEOUT": 1.0,
    "TASKPOOL_HEALTH_MAX_RECORDER_LAG": 30.0,
    "TASKPOOL_HEALTH_RECORDER_DOWN_AFTER": 30.0,
}


def setting(name: str) -> Any:
    value = getattr(settings, name, DEFAULTS[name])
    if name in ACCESS_CHOICES and value not in ACCESS_CHOICES[name]:
        raise ValueError(f"{name} must be one of {', '.join(ACCESS_CHOICES[name])}, got {value!r}")
    return value


_clients: dict[tuple[str, float], Client] = {}
_clients_lock = threading.Lock()


def short_client(timeout: float) -> Client:
    """A client for the configured socket that gives up after ``timeout`` seconds.

    One per (socket, timeout), shared by the process's threads (each thread keeps its
    own connection), apart from the default client with its longer timeout."""
    key = (taskpool_client.socket_path(), float(timeout))
    found = _clients.get(key)
    if found is None:
        with _clients_lock:
            found = _clients.setdefault(key, Client(key[0], timeout=key[1]))
    return found


def denied(request: HttpRequest, access: str) -> JsonResponse | None:
    user = getattr(request, "user", None)
    if access in ("open", "id"):
        return None
    if user is None or not user.is_authenticated:
        return JsonResponse({"error": "sign in to see this"}, status=403)
    if access == "staff" and not user.is_staff:
        return JsonResponse({"error": "only staff users may see this"}, status=403)
    return None


# -- health ------------------------------------------------------------------------------


class RecorderWatch:
    """Remembers, per supervisor, since when its recorder has had no process."""

    def __init__(self) -> None:
        self._down_since: dict[tuple, float] = {}
        self._lock = threading.Lock()

    def down_for(self, stats: dict, now: float) -> float:
        """Seconds this process has seen the recorder without a pid (0 when it has one)."""
        key = (stats.get("supervisor_id"), stats.get("pid"))
        recorder = stats.get("recorder")
        with self._lock:
            if not isinstance(recorder, dict) or recorder.get("pid") is not None:
                self._down_since.pop(key, None)
                return 0.0
            if len(self._down_since) > 100:  # supervisors come and go: forget old ones
                self._down_since.clear()
            return now - self._down_since.setdefault(key, now)


recorder_watch = RecorderWatch()


def health_problems(stats: dict | None, unreachable: str | None = None, *, max_recorder_lag: float = 30.0,
                    recorder_down_for: float = 0.0, recorder_down_after: float = 30.0) -> list[str]:
    """What is wrong with a supervisor, judged from its stats (empty when healthy)."""
    if stats is None:
        return [f"supervisor unreachable: {unreachable or 'no answer'}"]
    problems = []
    phase = stats.get("phase")
    if phase != "running":
        problems.append(f"supervisor is {phase}, not running")
    workers = stats.get("workers") or []
    if not any(w.get("state") in LIVE_WORKER_STATES for w in workers):
        states = ", ".join(sorted(str(w.get("state")) for w in workers)) or "none"
        problems.append(f"no live worker: 0 of {len(workers)} idle or busy (states: {states}; "
                        f"target {stats.get('target_workers')})")
    recorder = stats.get("recorder")
    if isinstance(recorder, dict):  # None with the memory store: nothing to record
        lag = recorder.get("lag") or 0.0
        if lag > max_recorder_lag:
            problems.append(f"recorder stuck: its oldest unwritten batch has waited {lag:.1f}s "
                            f"(limit {max_recorder_lag:g}s); {recorder.get('pending', 0)} task state(s) pending")
        sweep_age = recorder.get("last_pull_age") or 0.0
        if sweep_age > max_recorder_lag:
            problems.append(f"recorder stuck: a store sweep has been under way for {sweep_age:.1f}s "
                            f"(limit {max_recorder_lag:g}s)")
        recorder_down_for = max(recorder_down_for, recorder.get("down_for") or 0.0)
        if recorder.get("pid") is None and recorder_down_for > recorder_down_after:
            problems.append(f"recorder down: no recorder process for {recorder_down_for:.0f}s "
                            f"(limit {recorder_down_after:g}s; {recorder.get('restarts', 0)} restart(s))")
    return problems


@never_cache
@require_safe
def health(request: HttpRequest) -> JsonResponse:
    refusal = denied(request, setting("TASKPOOL_HEALTH_ACCESS"))
    if refusal is not None:
        return refusal
    stats, unreachable = None, None
    try:
        reply = short_client(setting("TASKPOOL_HEALTH_TIMEOUT")).request(StatsRequest())
        stats = reply.data  # type: ignore[attr-defined]
    except (SupervisorUnavailable, RemoteError) as exc:
        unreachable = str(exc)
    except TaskpoolError as exc:  # e.g. a protocol error: the socket answers, but not as a supervisor
        unreachable = f"{type(exc).__name__}: {exc}"
    down_for = recorder_watch.down_for(stats, time.monotonic()) if stats is not None else 0.0
    problems = health_problems(
        stats, unreachable, max_recorder_lag=setting("TASKPOOL_HEALTH_MAX_RECORDER_LAG"),
        recorder_down_for=down_for, recorder_down_after=setting("TASKPOOL_HEALTH_RECORDER_DOWN_AFTER"),
    )
    body = {
        "healthy": not problems,
        "problems": problems,
        "socket": taskpool_client.socket_path(),
        "checked_at": time.time(),
        "stats": stats,
    }
    return JsonResponse(body, status=200 if not problems else 503)


# -- one task ----------------------------------------------------------------------------


def task_payload(info) -> dict:
    """The task endpoint's answer for a ``TaskInfo``."""
    error = None
    if info.status in (FAILED, CANCELLED) and info.errors:
        last = info.errors[-1]
        error = {"type": last.get("type"), "message": last.get("message")}
    return {
        "id": info.task_id,
        "name": info.name,
        "status": info.status,
        "final": info.status in FINAL_STATUSES,
        "progress": info.progress,
        "progress_message": info.progress_message,
        "attempts": info.attempts,
        "result": info.result if info.status == SUCCESSFUL else None,
        "error": error,
    }


@never_cache
@require_safe
def task_status(request: HttpRequest, task_id: str) -> JsonResponse:
    refusal = denied(request, setting("TASKPOOL_TASK_ACCESS"))
    if refusal is not None:
        return refusal
    not_found = JsonResponse({"error": "no such task", "id": task_id}, status=404)
    if not TASK_ID.match(task_id):
        return not_found
    handle = TaskHandle(task_id, client=short_client(setting("TASKPOOL_TASK_TIMEOUT")))
    try:
        info = handle.refresh()
    except TaskNotFound:
        return not_found
    except SupervisorUnavailable as exc:
        if handle.store.durable:  # refresh() found no row in the store either
            return not_found
        return JsonResponse({"error": f"task state unavailable: {exc}", "id": task_id}, status=503)
    except TaskpoolError as exc:  # the store failed too (StoreError) or the supervisor refused
        return JsonResponse({"error": f"task state unavailable: {exc}", "id": task_id}, status=503)
    return JsonResponse(task_payload(info))
