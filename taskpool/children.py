"""Forking, reaping and killing worker processes; the record of each worker.

The supervisor's loop is the only caller, so the worker table has one owner.
A worker is forked with a socketpair; the child closes every descriptor the
supervisor holds (listener, clients, other workers' channels, the selector) so
that EOF on a channel reliably means that worker is gone.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable
from enum import StrEnum

from .records import Factory, record
from .transport import FramedConnection
from .worker import BOOT_ERROR_EXIT, worker_main


class WorkerState(StrEnum):
    BOOTING = "booting"    # forked, importing task modules
    IDLE = "idle"
    BUSY = "busy"
    RETIRING = "retiring"  # channel closed; exits when it sees EOF
    KILLED = "killed"      # SIGKILL sent; waiting to be reaped


@record(eq=False)
class WorkerProc:
    wid: int
    pid: int
    generation: int
    conn: FramedConnection | None
    started: float  # monotonic
    state: WorkerState = WorkerState.BOOTING
    task_id: str | None = None  # the task it is running
    queued: deque = Factory(deque)  # ids sent ahead (prefetch), not started yet, in order
    running_name: str = ""  # the name of the task it runs, and since when (monotonic)
    running_since: float = 0.0
    tasks_done: int = 0
    deadline: float | None = None  # task timeout, monotonic
    kill_at: float | None = None  # escalation to SIGKILL, monotonic
    retire_after_task: bool = False
    boot_error: str | None = None
    names: list = Factory(list)

    @property
    def serving(self) -> bool:
        """Counts toward the target number of workers."""
        return self.state in (WorkerState.BOOTING, WorkerState.IDLE, WorkerState.BUSY) and not self.retire_after_task


def spawn(
    wid: int,
    generation: int,
    modules: tuple[str, ...],
    max_frame: int,
    max_outbox: int,
    measure_rss: bool,
    close_in_child: Callable[[], None],
    now: float,
    post_fork: str | None = None,
    spin: float = 0.0,
) -> WorkerProc:
    """Fork one worker."""
    pid, parent_end = fork_child(
        lambda sock: worker_main(sock, modules, generation, wid, max_frame, measure_rss, post_fork, spin),
        close_in_child,
    )
    conn = FramedConnection(parent_end, max_frame, max_outbox)
    return WorkerProc(wid=wid, pid=pid, generation=generation, conn=conn, started=now)


def fork_child(main: Callable[[socket.socket], int], close_in_child: Callable[[], None]) -> tuple[int, socket.socket]:
    """Fork a child connected by a socketpair; it runs ``main(its end)`` and exits with
    its return value, never returning here. Returns (pid, the parent's end)."""
    parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    sys.stdout.flush()
    sys.stderr.flush()
    parent = os.getpid()
    _trim_heap()
    try:
        pid = os.fork()
    except OSError:
        parent_end.close()
        child_end.close()
        raise
    if pid == 0:
        code = 1
        try:
            die_with_parent(parent)
            parent_end.close()
            close_in_child()
            code = main(child_end)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    child_end.close()
    return pid, parent_end


TRIM_INTERVAL = 1.0  # seconds between heap trims before a fork (~7 ms for a heap with 100 MB free in pieces)
_trimmed_at = -TRIM_INTERVAL
_malloc_trim: Callable[[int], int] | None = None


def _trim_heap() -> None:
    """Give the free pages inside the C heap back to the OS before a fork (glibc's
    ``malloc_trim``; elsewhere nothing). A child starts with every page the supervisor
    has resident; the ~1.3 MiB the imports leave free at the first fork would otherwise
    count again in the RSS of each worker and the recorder. At most once a second, so a
    reload forking many workers, or recycling under load, pays for one trim."""
    global _trimmed_at, _malloc_trim
    now = time.monotonic()
    if now - _trimmed_at < TRIM_INTERVAL:
        return
    _trimmed_at = now
    if _malloc_trim is None:
        try:
            _malloc_trim = ctypes.CDLL(None).malloc_trim
        except (OSError, AttributeError):  # not glibc: nothing to trim with
            _malloc_trim = _no_trim
    _malloc_trim(0)


def _no_trim(pad: int) -> int:
    return 0


_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """SIGKILL this child the moment its supervisor dies, however it dies (Linux).

    An orphaned worker would keep the supervisor's spool lock (so its rows could not be
    recovered) and run its task past any timeout, since nobody enforces it any more. The
    task it was running is re-run by the next supervisor, as for any lost worker."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return  # not Linux: orphans exit when they next read from their channel
    if os.getppid() != parent:  # the supervisor died before prctl took effect
        os._exit(1)


def reap() -> list[tuple[int, int]]:
    """(pid, wait status) of every child that has exited, without blocking."""
    reaped = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return reaped
        if pid == 0:
            return reaped
        reaped.append((pid, status))


def kill(pid: int, sig: int = signal.SIGKILL) -> None:
    """Signal a child; a child that is already gone (ESRCH) is not an error."""
    try:
        os.kill(pid, sig)
    except OSError as exc:
        if exc.errno != errno.ESRCH:
            raise


def describe_exit(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        hint = " (perhaps out of memory?)" if sig == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    code = os.waitstatus_to_exitcode(status)
    if code == BOOT_ERROR_EXIT:
        return f"exited with code {code} (could not import its task modules)"
    return f"exited with code {code}"
