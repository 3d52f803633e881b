"""Tasks for scripts/soak: one per kind of the mix. Every run appends "token pid start"
to SPOOL/soak-runs/<worker pid>.log before doing anything else, so the soak can count
runs per task (duplicates) whatever happens to the worker afterwards.

Options are chosen so that the soak's own random worker kills cannot change a task's
final status: the kinds that must succeed get 5 attempts (a kill costs one).
"""

from __future__ import annotations

import os
import signal
import time

import taskpool

RUNS_DIR = "soak-runs"
MARKERS_DIR = "soak-markers"


def _record(token: str, where: str) -> None:
    """One small O_APPEND write per run: atomic, and on disk before the body can die."""
    started = time.time()
    path = os.path.join(where, RUNS_DIR, f"{os.getpid()}.log")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{token} {os.getpid()} {started:.6f}\n".encode())
    finally:
        os.close(fd)


@taskpool.task(max_attempts=5)
def fast(token: str, where: str) -> str:
    _record(token, where)
    return token


@taskpool.task(max_attempts=5)
def slow(token: str, where: str) -> str:
    _record(token, where)
    time.sleep(0.2)
    return token


@taskpool.task  # no retry_for: the exception ends the task, FAILED
def fail(token: str, where: str) -> None:
    _record(token, where)
    raise ValueError(f"{token} fails on purpose")


@taskpool.task(max_attempts=5)
def crash_once(token: str, where: str) -> str:
    """Kill its own worker on the first run that gets this far (marker file), then succeed:
    the supervisor must run it again and record SUCCESSFUL."""
    _record(token, where)
    try:
        fd = os.open(os.path.join(where, MARKERS_DIR, token), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return token
    os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("unreachable: SIGKILL is not caught")


@taskpool.task(max_attempts=3)
def crash_always(token: str, where: str) -> None:
    """Every attempt ends the worker: FAILED with WorkerLost after 3 runs."""
    _record(token, where)
    os._exit(70)


@taskpool.task(timeout=0.3)  # TaskTimeout is not in retry_for: FAILED at the first timeout
def too_slow(token: str, where: str) -> None:
    _record(token, where)
    time.sleep(30)
