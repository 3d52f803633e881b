"""The worker: forked by the supervisor, imports the task modules, runs one task at a time.

Data flow: the supervisor writes ``Run`` frames on this worker's socketpair; the
worker answers each with ``Progress`` frames (from ``taskpool.progress``) and one
``Done``. EOF on the channel means "exit now": the supervisor retired this worker.
If the supervisor dies, the kernel kills its workers at once (PR_SET_PDEATHSIG, see
children.die_with_parent), and the next supervisor re-runs the task in hand.

Signals: the supervisor owns all decisions, so a worker ignores INT, TERM, HUP,
TTIN and TTOU (a Ctrl-C or a systemd stop that reaches the whole process group
must not kill a task mid-way; the supervisor drains and stops it). Python-level
no-op handlers are used instead of SIG_IGN so that subprocesses started by tasks
get default dispositions again on exec. USR1 asks to reopen log files.
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from types import CoroutineType

from . import titles
from .errors import InvalidArguments, ProtocolError, Retry
from .json_values import check_json_compatible
from .protocol import Cancel, Done, Progress, Ready, Run, encode
from .registry import backoff_delay, default_registry
from .transport import Channel, Closed

TYPE_CHECKING = False  # typing stays unimported at run time (docs/performance.md, idle RSS)
if TYPE_CHECKING:
    from typing import Any

BOOT_ERROR_EXIT = 3
REPLY_MARGIN = 64 * 1024  # a result leaves this much of a frame (or a quarter) for the reply carrying it
TRACEBACK_LIMIT = 8 * 1024  # longer tracebacks keep their head and tail
# A Run taken from a read of at most this many bytes needs no second look for its Cancel: the
# read took in all the socket held, and decoding it took microseconds. After a larger one (a
# full socket buffer, big arguments) a Cancel may have been held back, or written meanwhile.
FRESH_READ_LIMIT = 64 * 1024
PROGRESS_INTERVAL = 0.05  # seconds between progress frames; the last value is always sent

log = logging.getLogger("taskpool.worker")


class _Context:
    """The task in hand, for ``taskpool.progress``; None outside a worker."""

    def __init__(self, channel: Channel, task_id: str, attempt: int = 1) -> None:
        self.channel = channel
        self.task_id = task_id
        self.attempt = attempt  # 1 on the first run (the Django backend's TaskContext.attempt)
        self.last_sent = 0.0
        self.unsent: tuple[float, str | None] | None = None

    def progress(self, percent: float, message: str | None) -> None:
        now = time.monotonic()
        if percent < 100 and now - self.last_sent < PROGRESS_INTERVAL:
            self.unsent = (percent, message)
            return
        self.unsent = None
        self.last_sent = now
        self.channel.send(Progress(self.task_id, percent, message))

    def flush(self) -> None:
        if self.unsent is not None:
            self.channel.send(Progress(self.task_id, *self.unsent))
            self.unsent = None


_current: Any = None  # a _Context in a worker (immediate mode puts its own stand-in here)
_reopen_logs = False


def progress(percent: float, message: str | None = None) -> None:
    """Report how far the running task is (0-100) with an optional message.

    Outside a worker (a task called directly, in a test) this does nothing."""
    if isinstance(percent, bool) or not isinstance(percent, (int, float)) or not 0 <= percent <= 100:
        raise ValueError(f"progress percent must be a number from 0 to 100, got {percent!r}")
    if message is not None and not isinstance(message, str):
        raise TypeError(f"progress message must be a string, got {type(message).__name__}")
    if _current is not None:
        _current.progress(float(percent), message)


def _ask_reopen(signum: int, frame: Any) -> None:
    global _reopen_logs
    _reopen_logs = True


def _install_signals() -> None:
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU):
        signal.signal(sig, lambda signum, frame: None)
    signal.signal(signal.SIGUSR1, _ask_reopen)
    for sig in (signal.SIGCHLD, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_DFL)


def _reopen_log_files() -> None:
    global _reopen_logs
    _reopen_logs = False
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.close()  # FileHandler reopens on the next record


class RecordedFailure(Exception):
    """Raised by a task wrapper that has described its failure itself (the Django backend,
    for a task's SystemExit or KeyboardInterrupt): ``error`` is recorded as it is."""

    def __init__(self, error: dict) -> None:
        super().__init__(error.get("message", ""))
        self.error = error


def error_of(exc: BaseException) -> dict:
    """The error dict recorded for an exception; never raises, even for odd exceptions."""
    if isinstance(exc, RecordedFailure):
        return exc.error
    kind = type(exc)
    try:
        message = str(exc)
    except Exception:  # a broken __str__ must not take the worker down
        message = f"<{kind.__qualname__} whose str() failed>"
    try:
        text = "".join(traceback.format_exception(exc))
    except Exception:
        text = ""
    if len(text) > TRACEBACK_LIMIT:
        cut = len(text) - TRACEBACK_LIMIT
        text = text[: TRACEBACK_LIMIT // 4] + f"\n... {cut} characters left out ...\n" + text[-3 * TRACEBACK_LIMIT // 4 :]
    return {"type": f"{kind.__module__}.{kind.__qualname__}", "message": message, "traceback": text}


def _retry_delay(msg: Run, exc: Exception) -> float | None:
    """Seconds until the next attempt when the task asks for one (Retry or retry_for)."""
    task = default_registry.get(msg.name)
    if task is None:
        return None
    opts = task.options
    if isinstance(exc, Retry):
        delay = exc.delay
        if isinstance(delay, (int, float)) and not isinstance(delay, bool) and 0 <= delay < math.inf:
            return float(delay)
        return backoff_delay(msg.attempt, opts.retry_backoff, opts.retry_backoff_max)
    if opts.retry_for and isinstance(exc, opts.retry_for):
        return backoff_delay(msg.attempt, opts.retry_backoff, opts.retry_backoff_max)
    return None


def _call(name: str, args: list, kwargs: dict) -> Any:
    task = default_registry.get(name)
    if task is None:
        raise LookupError(f"task {name!r} is not registered in this worker")
    result = task.func(*args, **kwargs)
    if isinstance(result, CoroutineType):  # an async def task; asyncio is imported here, not before the fork
        import asyncio

        result = asyncio.run(result)
    return result


def run_one(channel: Channel, msg: Run, max_frame: int, measure_rss: bool) -> bytes:
    """Run one task and return its Done frame. Task failures never escape."""
    global _current
    _current = _Context(channel, msg.task_id, msg.attempt)
    ok, result, error, retry_in = True, None, None, None
    try:
        result = _call(msg.name, msg.args, msg.kwargs)
        check_json_compatible(result, "result")
    except InvalidArguments as exc:
        ok, error = False, error_of(InvalidArguments(f"task {msg.name} returned a value that cannot be stored: {exc}"))
    except Exception as exc:  # the task's own failure, reported, not raised
        ok, error, retry_in = False, error_of(exc), _retry_delay(msg, exc)
    except SystemExit as exc:
        ok, error = False, error_of(RuntimeError(f"task called sys.exit({exc.code})"))
    except KeyboardInterrupt as exc:  # raised by the task itself: a failure, not a reason to die
        ok, error = False, error_of(exc)
    finally:
        _current.flush()
        _current = None
    rss = _rss() if measure_rss else 0
    frame = encode(Done(msg.task_id, ok, result if ok else None, error, rss, retry_in))
    limit = max_frame - min(REPLY_MARGIN, max_frame // 4)
    if len(frame) - 4 > limit:
        too_big = InvalidArguments(f"result of {msg.name} is {len(frame)} bytes encoded, over the {limit}-byte result limit")
        frame = encode(Done(msg.task_id, False, None, error_of(too_big), rss))
    return frame


def _rss() -> int:
    """This worker's RSS in bytes, from /proc (what psutil reads on Linux), so a worker
    does not import psutil (~1.4 MiB) to report it; psutil where there is no /proc."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import psutil

        return psutil.Process().memory_info().rss


_boundary_hooks: list[Callable[[], None]] = []


def on_task_boundary(hook: Callable[[], None]) -> None:
    """Call ``hook`` in this worker before and after every task (e.g. Django's
    close_old_connections, as Django does between requests)."""
    _boundary_hooks.append(hook)


def _run_boundary_hooks() -> None:
    for hook in _boundary_hooks:
        hook()


def call_import_path(path: str) -> None:
    """Call ``module:function`` (the post_fork hook)."""
    module, _, name = path.partition(":")
    getattr(importlib.import_module(module), name)()


def boot(channel: Channel, modules: tuple[str, ...], generation: int, wid: int, post_fork: str | None = None) -> bool:
    """Run the post_fork hook and import the task modules; tell the supervisor Ready
    (or why not) and return success."""
    from .protocol import Error

    titles.set_title(f"worker {wid} gen {generation} booting")
    try:
        if post_fork:
            call_import_path(post_fork)
        for module in modules:
            importlib.import_module(module)
    except BaseException as exc:  # any import failure, including SystemExit, stops the boot
        detail = "".join(traceback.format_exception_only(exc)).strip()
        channel.send(Error("boot_failed", f"worker could not import its task modules: {detail}", None))
        return False
    channel.send(Ready(os.getpid(), generation, default_registry.defaults()))
    return True


_NOT_STARTED = {"type": "taskpool.errors.Cancelled", "message": "cancelled before it started", "traceback": ""}


class _Cancels:
    """Ids of tasks sent ahead that the supervisor cancelled before they started. The channel
    hands each Cancel frame here as it is decoded (``Channel.divert``), so the check before a
    task is a set lookup, not a scan of the frames queued behind it (up to ``--prefetch``)."""

    __slots__ = ("ids",)

    def __init__(self) -> None:
        self.ids: set[str] = set()

    def take(self, msg: object) -> bool:
        if type(msg) is Cancel:
            self.ids.add(msg.task_id)  # type: ignore[attr-defined]
            return True
        return False

    def before_start(self, channel: Channel, task_id: str, fresh: bool) -> bool:
        """Was ``task_id`` cancelled? A task that waited behind another, or came in a large
        read (``fresh`` false), first takes in what has arrived meanwhile, without waiting. A
        small read just now needs no second one: a Cancel that comes after it is the
        supervisor's to handle, as for any task that has started (docs/architecture.md)."""
        if not fresh:
            channel.pending()
        if task_id in self.ids:
            self.ids.discard(task_id)
            return True
        if len(self.ids) > 1000:  # ids of tasks that started before their Cancel came: forget them
            self.ids.clear()
        return False


def serve(channel: Channel, max_frame: int, measure_rss: bool, generation: int, wid: int) -> None:
    """Run tasks until the supervisor closes the channel. Each Done is written the moment
    its task ends: a Done held back to share a write with the next one (tried, and measured
    no faster) would be lost with the worker if the next task killed it, and the supervisor
    would blame the wrong task."""
    title = _Title(f"worker {wid} gen {generation}")
    title.idle()
    cancels = _Cancels()
    channel.divert = cancels.take
    channel.before_sleep = title.idle
    while True:
        fresh = not channel.buffered()  # the next Run comes from a read now, not from the queue
        before = channel.bytes_read
        try:
            msg = channel.recv()
        except (Closed, ConnectionError):
            return
        fresh = fresh and channel.bytes_read - before <= FRESH_READ_LIMIT
        if _reopen_logs:
            _reopen_log_files()
        if not isinstance(msg, Run):
            raise ProtocolError(f"worker got an unexpected {type(msg).__name__} frame")
        if cancels.before_start(channel, msg.task_id, fresh):
            channel.send(Done(msg.task_id, False, None, _NOT_STARTED, 0))
            continue
        title.busy(msg.name)
        _run_boundary_hooks()
        frame = run_one(channel, msg, max_frame, measure_rss)
        _run_boundary_hooks()
        channel.send_bytes(frame)


class _Title:
    """The worker's process title: ``... busy <task>`` while it works, ``... idle`` once it
    waits. Set only when it changes, and shown idle only when the worker is about to sleep
    (``Channel.before_sleep``): a worker given its next task within its spin stays "busy"."""

    __slots__ = ("prefix", "shown", "_busy")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.shown = ""
        self._busy: dict[str, str] = {}  # task name -> "busy <name>" (registered names: bounded)

    def idle(self) -> None:
        self._show("idle")

    def busy(self, task_name: str) -> None:
        text = self._busy.get(task_name)
        if text is None:
            text = f"busy {task_name}"
            if len(self._busy) < 1000:
                self._busy[task_name] = text
        self._show(text)

    def _show(self, state: str) -> None:
        if state != self.shown:
            self.shown = state
            titles.set_title(f"{self.prefix} {state}")


def worker_main(
    sock: Any, modules: tuple[str, ...], generation: int, wid: int, max_frame: int, measure_rss: bool,
    post_fork: str | None = None, spin: float = 0.0,
) -> int:
    """Entry point in the forked child; returns the exit code."""
    _install_signals()
    sock.setblocking(True)
    channel = Channel(sock, max_frame, trusted=True, spin=spin)
    try:
        if not boot(channel, modules, generation, wid, post_fork):
            return BOOT_ERROR_EXIT
        serve(channel, max_frame, measure_rss, generation, wid)
    except (Closed, BrokenPipeError, ConnectionError):
        return 0
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        return 1
    return 0
