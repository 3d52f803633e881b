"""The client: ``submit()``, ``TaskHandle``, ``stats()`` from any Python process.

Each thread keeps its own connection to the supervisor (no lock held across a
long ``result()`` wait), re-made after a fork (a child never reuses its parent's
socket) and once after a broken connection; every request is idempotent (task
ids are made here, so a re-sent Submit is recognised), which makes that retry
safe. Arguments are checked here, so a bad value fails in the caller with a
clear error and nothing is sent.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from typing import Any

from .config import resolve_socket
from .errors import (
    RemoteError,
    ResultTimeout,
    SupervisorUnavailable,
    TaskFailed,
    TaskNotFound,
    UnknownTask,
)
from .protocol import (
    DEFAULT_MAX_FRAME,
    FINAL_STATUSES,
    MAGIC,
    PROTOCOL_VERSION,
    SUCCESSFUL,
    Cancel,
    Error,
    Hello,
    Message,
    Query,
    StatsRequest,
    Submit,
    TaskInfo,
    Welcome,
    check_json_compatible,
)
from .registry import Task, default_registry
from .transport import Channel, Closed, connect

DEFAULT_TIMEOUT = 10.0
WAIT_CHUNK = 30.0  # a long result() wait is a series of waits this long

_ERRORS = {"unknown_task": UnknownTask, "not_found": TaskNotFound}
_settings: dict[str, Any] = {"spool": None, "socket": None, "timeout": DEFAULT_TIMEOUT}


def configure(spool: str | None = None, socket: str | None = None, timeout: float | None = None) -> None:
    """Say where the supervisor is (else $TASKPOOL_SOCKET, $TASKPOOL_SPOOL, ./spool)."""
    global _default
    if spool is not None:
        _settings["spool"] = spool
    if socket is not None:
        _settings["socket"] = socket
    if timeout is not None:
        _settings["timeout"] = timeout
    _default = None


def socket_path() -> str:
    spool = _settings["spool"] or os.environ.get("TASKPOOL_SPOOL")
    sock = _settings["socket"] or os.environ.get("TASKPOOL_SOCKET")
    return resolve_socket(spool, sock)


class Client:
    """Thread-safe, fork-safe access to one supervisor socket."""

    def __init__(self, path: str, timeout: float = DEFAULT_TIMEOUT, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.path = path
        self.timeout = timeout
        self.max_frame = max_frame
        self._local = threading.local()

    def _channel(self) -> Channel:
        local = self._local
        channel = getattr(local, "channel", None)
        if channel is not None and local.pid == os.getpid():
            return channel
        if channel is not None:
            channel.close()  # inherited across fork: this process's copy only
        channel = Channel(connect(self.path, self.timeout), self.max_frame)
        try:
            channel.send(Hello(MAGIC, PROTOCOL_VERSION))
            reply = channel.recv()
        except (OSError, Closed) as exc:
            channel.close()
            raise SupervisorUnavailable(f"the supervisor at {self.path} did not answer the handshake: {exc}") from None
        if isinstance(reply, Error):
            channel.close()
            raise RemoteError(reply.code, reply.message)
        if not isinstance(reply, Welcome):
            channel.close()
            raise SupervisorUnavailable(f"unexpected handshake reply {type(reply).__name__} from {self.path}")
        local.channel, local.pid = channel, os.getpid()
        return channel

    def _forget(self) -> None:
        channel = getattr(self._local, "channel", None)
        if channel is not None:
            channel.close()
        self._local.channel = None

    def request(self, msg: Message, wait: float = 0.0) -> Message:
        """Send one request and return its reply; raises RemoteError for an Error reply."""
        for attempt in (1, 2):
            channel = self._channel()
            try:
                channel.settimeout(self.timeout + wait)
                channel.send(msg)
                reply = channel.recv()
                break
            except TimeoutError:
                self._forget()
                waited = self.timeout + wait
                raise SupervisorUnavailable(f"the supervisor at {self.path} did not reply within {waited:.1f}s") from None
            except (Closed, OSError) as exc:
                self._forget()
                if attempt == 2:
                    raise SupervisorUnavailable(f"lost the connection to the supervisor at {self.path}: {exc}") from None
        if isinstance(reply, Error):
            if reply.code in ("bad_frame", "bad_version", "forbidden"):
                self._forget()  # the supervisor closes the connection after these
            raise _ERRORS.get(reply.code, RemoteError)(reply.code, reply.message)
        return reply

    def query(self, task_id: str, wait: float = 0.0) -> TaskInfo:
        reply = self.request(Query(task_id, float(wait)), wait=wait)
        assert isinstance(reply, TaskInfo), reply
        return reply


_default: Client | None = None
_default_lock = threading.Lock()


def default_client() -> Client:
    global _default
    path = socket_path()
    client = _default
    if client is None or client.path != path:
        with _default_lock:
            if _default is None or _default.path != path:
                _default = Client(path, _settings["timeout"])
            client = _default
    return client


class TaskHandle:
    """A submitted task. Attributes read the supervisor fresh on each access."""

    def __init__(self, task_id: str, name: str | None = None, client: Client | None = None) -> None:
        self.id = task_id
        self.name = name
        self._client = client

    def __repr__(self) -> str:
        return f"<TaskHandle {self.id} {self.name or ''}>".replace(" >", ">")

    @property
    def client(self) -> Client:
        return self._client or default_client()

    def refresh(self) -> TaskInfo:
        info = self.client.query(self.id)
        self.name = info.name
        return info

    @property
    def status(self) -> str:
        return self.refresh().status

    @property
    def progress(self) -> float | None:
        return self.refresh().progress

    @property
    def progress_message(self) -> str | None:
        return self.refresh().progress_message

    @property
    def errors(self) -> list:
        return self.refresh().errors

    def wait(self, timeout: float | None = None) -> TaskInfo:
        """Block until the task is final (or ``timeout`` passes); return its state."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = WAIT_CHUNK if deadline is None else min(WAIT_CHUNK, deadline - time.monotonic())
            info = self.client.query(self.id, wait=max(0.0, remaining))
            if info.status in FINAL_STATUSES or (deadline is not None and time.monotonic() >= deadline):
                return info

    def result(self, timeout: float | None = None) -> Any:
        """The return value; raises TaskFailed (FAILED/CANCELLED) or ResultTimeout."""
        info = self.wait(timeout)
        if info.status == SUCCESSFUL:
            return info.result
        if info.status in FINAL_STATUSES:
            raise TaskFailed(self.id, info.status, info.errors[-1] if info.errors else None)
        raise ResultTimeout(f"task {self.id} is still {info.status} after {timeout}s")

    def cancel(self) -> str:
        """Cancel: a READY task never runs; a RUNNING one is stopped. Returns the status."""
        reply = self.client.request(Cancel(self.id))
        assert isinstance(reply, TaskInfo), reply
        return reply.status


def _resolve(task: Task | str) -> tuple[str, Task | None]:
    if isinstance(task, Task):
        return task.name, task
    if isinstance(task, str):
        return task, default_registry.get(task)
    raise TypeError(f"submit() needs a task or a task name, got {type(task).__name__}")


def build_submit(task: Task | str, args: tuple, kwargs: dict) -> Submit:
    """The Submit frame for one call; raises InvalidArguments before anything is sent."""
    name, known = _resolve(task)
    check_json_compatible(list(args), "args")
    check_json_compatible(kwargs, "kwargs")
    task_id = uuid.uuid4().hex
    if known is None:  # by name, module not imported here: the workers' defaults apply
        return Submit(task_id, name, list(args), kwargs, None, None, None, None, None)
    opts = known.options
    return Submit(task_id, name, list(args), kwargs, opts.priority, opts.run_after, opts.max_attempts, opts.timeout, opts.queue)


def submit(task: Task | str, *args: Any, **kwargs: Any) -> TaskHandle:
    """Send a task to the supervisor; returns its handle as soon as it is accepted."""
    msg = build_submit(task, args, kwargs)
    client = default_client()
    client.request(msg)
    return TaskHandle(msg.task_id, msg.name, client)


def get(task_id: str) -> TaskHandle:
    """A handle for a task submitted anywhere, by id."""
    return TaskHandle(task_id)


def cancel(task_id: str) -> str:
    return TaskHandle(task_id).cancel()


def stats() -> dict:
    """The supervisor's stats as a dict (see docs/operations.md for the keys)."""
    reply = default_client().request(StatsRequest())
    return reply.data  # type: ignore[attr-defined]
