"""The client API: ``submit()``, ``TaskHandle``, ``get()``, ``cancel()``, ``stats()``.

With a durable store (sqlite, the default; django) ``submit()`` writes the READY
row first - the task exists from then on - and only then tells the supervisor over
the socket. If no supervisor answers, ``submit()`` still returns a handle and logs
a warning: the row waits, and the next supervisor's sweep adopts it. Handles ask
the supervisor first (it knows the freshest state and can notify a waiter the
moment a task ends) and fall back to the store for tasks it does not hold, or
when it is down. With the ``memory`` store the supervisor is the only truth.

Arguments are checked here, so a bad value fails in the caller with a clear error
and nothing is written or sent.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

from .config import resolve_socket
from .connection import DEFAULT_TIMEOUT, Client, raise_error
from .errors import (
    ConfigError,
    ResultTimeout,
    SupervisorUnavailable,
    TaskFailed,
    TaskNotFound,
)
from .json_values import check_json_compatible
from .locks import lock_is_free
from .protocol import (
    FINAL_STATUSES,
    MAX_QUERY_MANY,
    READY,
    SUCCESSFUL,
    Cancel,
    Error,
    Query,
    StatsRequest,
    Submit,
    TaskInfo,
)
from .registry import Task, default_registry
from .stores import Store, TaskRow, open_store

__all__ = ["Client", "TaskHandle", "cancel", "configure", "get", "stats", "submit", "submit_and_wait", "submit_many", "wait"]

log = logging.getLogger("taskpool.client")

WAIT_CHUNK = 30.0  # a long result() wait is a series of waits this long
POLL_DELAYS = (0.02, 0.05, 0.1, 0.2, 0.5)  # polling the store while no supervisor holds the task

_settings: dict[str, Any] = {"spool": None, "socket": None, "timeout": DEFAULT_TIMEOUT, "store": None, "immediate": None}
_lock = threading.Lock()
_default: Client | None = None
_stores: dict[tuple[str, str], Store] = {}


def configure(
    spool: str | None = None,
    socket: str | None = None,
    timeout: float | None = None,
    store: str | None = None,
    immediate: bool | None = None,
) -> None:
    """Say where the supervisor and the store are (else $TASKPOOL_SPOOL, $TASKPOOL_SOCKET,
    $TASKPOOL_STORE; defaults ./spool and sqlite). An empty string clears a setting.

    ``immediate=True`` (or $TASKPOOL_IMMEDIATE=1) runs submitted tasks inline in this
    process, still recording their rows: for tests and development without a supervisor."""
    global _default
    for name, value in (("spool", spool), ("socket", socket), ("timeout", timeout), ("store", store),
                        ("immediate", immediate)):
        if value is not None:
            _settings[name] = value
    _default = None


# The settings are read from the environment on every submit(), so a change is seen at once.
# os.environ.get spends 1 us on a name that is not set (a KeyError raised and caught inside
# os.environ), and these names are usually unset: five such reads were 5 us of a submit().
# CPython keeps the environment in os.environ._data, keyed by encodekey(name), the table its
# own lookups use: _env looks there first for one of these names, while os.environ is still
# that object.
_ENV_NAMES = ("TASKPOOL_IMMEDIATE", "TASKPOOL_SPOOL", "TASKPOOL_SOCKET", "TASKPOOL_STORE")
try:
    _ENV_KEYS = {name: os.environ.encodekey(name) for name in _ENV_NAMES}  # type: ignore[attr-defined]
    _ENVIRON: Any = os.environ if type(os.environ._data) is dict else None  # type: ignore[attr-defined]
except (AttributeError, TypeError, UnicodeError):  # another implementation: os.environ.get always
    _ENV_KEYS, _ENVIRON = {}, None


def _env(name: str) -> str | None:
    """``os.environ.get(name)``, quicker when ``name`` (one of _ENV_NAMES) is not set."""
    environ = os.environ
    if environ is _ENVIRON:
        key = _ENV_KEYS.get(name)
        if key is not None and key not in environ._data:
            return None
    return environ.get(name)


def immediate_mode() -> bool:
    if _settings["immediate"] is not None:
        return bool(_settings["immediate"])
    return (_env("TASKPOOL_IMMEDIATE") or "") not in ("", "0", "false", "False")


def spool_path() -> str:
    return os.path.abspath(_settings["spool"] or _env("TASKPOOL_SPOOL") or "spool")


def socket_path() -> str:
    return resolve_socket(spool_path(), _settings["socket"] or _env("TASKPOOL_SOCKET"))


def store_name() -> str:
    return _settings["store"] or _env("TASKPOOL_STORE") or "sqlite"


# default_client() and default_store() remember their last answer with the raw settings it
# came from, so a submit() does not resolve the same paths again (abspath, join: 3 us of a
# 70 us submit). The settings and environment are still read on every call, so a change to
# either is seen at once, as before; the working directory too, while a path is relative.
_client_memo: tuple[tuple, Client] | None = None
_store_memo: tuple[tuple, tuple[str, str], Store] | None = None


def _cwd_if_relative(path: Any) -> str | None:
    """The working directory when ``path`` depends on it (relative), else None."""
    return None if os.path.isabs(path) else os.getcwd()


def default_client() -> Client:
    global _default, _client_memo
    spool = _settings["spool"] or _env("TASKPOOL_SPOOL") or "spool"
    sock = _settings["socket"] or _env("TASKPOOL_SOCKET")
    raw = (spool, sock, _cwd_if_relative(sock or spool))
    memo = _client_memo
    if memo is not None and memo[0] == raw and memo[1] is _default:
        return memo[1]
    path = resolve_socket(os.path.abspath(spool), sock)
    client = _default
    if client is None or client.path != path:
        with _lock:
            if _default is None or _default.path != path:
                _default = Client(path, _settings["timeout"])
            client = _default
    _client_memo = (raw, client)
    return client


def default_store() -> Store:
    """The store this process writes rows to (one per kind and spool, opened lazily)."""
    global _store_memo
    spool = _settings["spool"] or _env("TASKPOOL_SPOOL") or "spool"
    raw = (store_name(), spool, _cwd_if_relative(spool))
    memo = _store_memo
    if memo is not None and memo[0] == raw and _stores.get(memo[1]) is memo[2]:
        return memo[2]
    key = (raw[0], os.path.abspath(spool))
    store = _stores.get(key)
    if store is None:
        with _lock:
            store = _stores.get(key) or open_store(*key)
            _stores[key] = store
    _store_memo = (raw, key, store)
    return store


def _check_agreement(client: Client, store: Store) -> None:
    """Refuse to go on when the supervisor keeps its tasks somewhere else."""
    welcome = client.welcome
    if welcome is None:
        return
    if welcome.store != store.name or (store.name == "sqlite" and welcome.spool != store.spool):
        raise ConfigError(
            f"the supervisor at {client.path} keeps tasks in {welcome.store} (spool {welcome.spool}) but this "
            f"process uses {store.name} (spool {store.spool or '-'}): set the same TASKPOOL_STORE and TASKPOOL_SPOOL"
        )


def _info_from_row(row: TaskRow) -> TaskInfo:
    return TaskInfo(row.task_id, row.name, row.status, row.attempts, row.progress, row.progress_message,
                    row.result, row.errors, row.worker_ids)


class TaskHandle:
    """A submitted task. Attributes read the task's state fresh on each access."""

    def __init__(self, task_id: str, name: str | None = None, client: Client | None = None,
                 store: Store | None = None, inline: TaskInfo | None = None) -> None:
        self.id = task_id
        self.name = name
        self._client = client
        self._store = store
        self._inline = inline  # immediate mode with the memory store: the only record
        self._final: TaskInfo | None = None  # filled by taskpool.wait(); read by wait()/result()

    def __repr__(self) -> str:
        return f"<TaskHandle {self.id}{' ' + self.name if self.name else ''}>"

    @property
    def client(self) -> Client:
        return self._client or default_client()

    @property
    def store(self) -> Store:
        return self._store or default_store()

    def _from_store(self) -> TaskInfo | None:
        row = self.store.fetch(self.id)
        return None if row is None else _info_from_row(row)

    def refresh(self, wait: float = 0.0) -> TaskInfo:
        """The task's state: from the supervisor when it holds the task, else the store.

        With ``wait`` > 0 the supervisor answers when the task ends or the wait is over."""
        if self._inline is not None:
            return self._inline
        try:
            info = self.client.query(self.id, wait)
        except (TaskNotFound, SupervisorUnavailable) as exc:
            info = self._from_store() if self.store.durable else None
            if info is None:
                raise exc
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
        if self._final is not None:
            return self._final
        deadline = None if timeout is None else time.monotonic() + timeout
        polls = 0
        while True:
            remaining = WAIT_CHUNK if deadline is None else min(WAIT_CHUNK, deadline - time.monotonic())
            started = time.monotonic()
            info = self.refresh(wait=max(0.0, remaining))
            if info.status in FINAL_STATUSES or (deadline is not None and time.monotonic() >= deadline):
                return info
            if time.monotonic() - started < remaining / 2:  # answered by the store: poll it
                delay = POLL_DELAYS[min(polls, len(POLL_DELAYS) - 1)]
                polls += 1
                time.sleep(delay if deadline is None else max(0.0, min(delay, deadline - time.monotonic())))

    def result(self, timeout: float | None = None) -> Any:
        """The return value; raises TaskFailed (FAILED/CANCELLED) or ResultTimeout."""
        info = self.wait(timeout)
        if info.status == SUCCESSFUL:
            return info.result
        if info.status in FINAL_STATUSES:
            raise TaskFailed(self.id, info.status, info.errors[-1] if info.errors else None)
        raise ResultTimeout(f"task {self.id} is still {info.status} after {timeout}s")

    def cancel(self) -> str:
        """Cancel: a READY task never runs; a RUNNING one is stopped. Returns the status.

        With no supervisor up, a READY row that no live supervisor holds is cancelled in
        the store directly; one still held by a live supervisor stays READY (ask again)."""
        try:
            reply = self.client.request(Cancel(self.id))
            assert isinstance(reply, TaskInfo), reply
            return reply.status
        except (TaskNotFound, SupervisorUnavailable):
            if not self.store.durable:
                raise
        row = self.store.fetch(self.id)
        if row is None:
            raise TaskNotFound("not_found", f"no task {self.id!r} in the supervisor or the store")
        holder_gone = row.held_by is None or lock_is_free(self.store.spool or spool_path(), row.held_by) is True
        if row.status == READY and holder_gone:
            self.store.cancel_ready(self.id, time.time(), row.held_by)
        return self.refresh().status


def wait(handles: Sequence[TaskHandle], timeout: float | None = None) -> list[TaskInfo]:
    """Wait until every task is final; return their states in order. Raises ResultTimeout
    if some are not final after ``timeout`` seconds.

    A few round trips for any number of tasks: it waits for the last unfinished task
    (tasks mostly end in submission order), then asks for all the others in one
    ``QueryMany``, and repeats. Afterwards each handle's ``result()`` answers at once."""
    deadline = None if timeout is None else time.monotonic() + timeout
    pending = [h for h in handles if h._final is None]
    while pending:
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        info = pending[-1].wait(remaining)
        if info.status not in FINAL_STATUSES:
            raise ResultTimeout(f"task {pending[-1].id} is still {info.status} after {timeout}s")
        pending[-1]._final = info
        _fill_final(pending[:-1])
        pending = [h for h in pending if h._final is None]
        if pending and deadline is not None and time.monotonic() >= deadline:
            raise ResultTimeout(f"{len(pending)} task(s) not final after {timeout}s")
    return [h._final for h in handles]  # type: ignore[misc]


def _fill_final(handles: list[TaskHandle]) -> None:
    """Ask the supervisor for many handles at once; those it does not hold read the store."""
    groups: dict[int, list[TaskHandle]] = {}
    for handle in handles:
        groups.setdefault(id(handle.client), []).append(handle)
    for group in groups.values():
        client, todo = group[0].client, group
        while todo:
            chunk = todo[:MAX_QUERY_MANY]
            try:
                infos = client.query_many([h.id for h in chunk])
            except SupervisorUnavailable:
                infos = []
            if not infos:  # nothing answered: one by one (store fallback included)
                infos = [h.refresh() for h in chunk]
            for handle, info in zip(chunk, infos, strict=False):
                if info is None and handle.store.durable:
                    info = handle._from_store()
                if info is not None and info.status in FINAL_STATUSES:
                    handle._final = info
            todo = todo[len(infos):]


def _resolve(task: Task | str) -> tuple[str, Task | None]:
    if isinstance(task, Task):
        return task.name, task
    if isinstance(task, str):
        return task, default_registry.get(task)
    raise TypeError(f"submit() needs a task or a task name, got {type(task).__name__}")


_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))  # the version and variant bits of a UUID
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)  # version 4, RFC 4122 variant


def new_task_id() -> str:
    """A task id, exactly what ``uuid.uuid4().hex`` gives (same bits set) in under half
    the time: the UUID object it builds was 2 us of a 70 us submit()."""
    return "%032x" % (int.from_bytes(os.urandom(16), "big") & _UUID4_CLEAR | _UUID4_SET)


_Checked = tuple[str, Task | None, list, dict]  # name, the registered task (or None), args, kwargs


def _check_call(task: Task | str, args: Sequence, kwargs: dict) -> _Checked:
    """Resolve and check one call; raises InvalidArguments (or TypeError) before anything
    is written or sent. Kept apart from making the Submit, so submit_many can learn
    whether a reply is needed first and build each frame once."""
    name, known = _resolve(task)
    args = list(args)
    check_json_compatible(args, "args")
    check_json_compatible(kwargs, "kwargs")
    return name, known, args, kwargs


def _make_submit(call: _Checked, stored: bool, reply: bool = True) -> Submit:
    name, known, args, kwargs = call
    if known is None:  # by name, module not imported here: the workers' defaults apply
        return Submit(new_task_id(), name, args, kwargs, None, None, None, None, None, stored, reply)
    o = known.options
    return Submit(new_task_id(), name, args, kwargs, o.priority, o.run_after, o.max_attempts, o.timeout, o.queue,
                  stored, reply)


def build_submit(task: Task | str, args: Sequence, kwargs: dict, stored: bool = False) -> Submit:
    """The Submit frame for one call; raises InvalidArguments before anything is sent."""
    return _make_submit(_check_call(task, args, kwargs), stored)


def row_of(msg: Submit) -> TaskRow:
    """The READY row a Submit stands for (unknown options take the built-in defaults)."""
    return TaskRow(
        msg.task_id, msg.name, msg.args, msg.kwargs, msg.queue or "default", msg.priority or 0, msg.run_after,
        msg.timeout, msg.max_attempts or 3, READY, 0, time.time(),
    )


def submit(task: Task | str, *args: Any, **kwargs: Any) -> TaskHandle:
    """Run a task in the pool; returns its handle at once (see the module docstring)."""
    store = default_store()  # the store's, then the client's, then the arguments' errors first, as submit_many
    client = default_client()
    return _submit_checked([_check_call(task, args, kwargs)], client, store)[0]


def submit_and_wait(task: Task | str, args: Sequence = (), kwargs: dict | None = None,
                    timeout: float | None = None) -> Any:
    """Run one call and return its result: what ``submit(task, *args, **kwargs).result(timeout)``
    does (and raises), for a caller that needs the answer now, as ``Pool.apply`` or Celery's
    ``delay().get()``.

    With the memory store it takes one round trip instead of two: the ``Submit`` and the wait
    for the task's end go in one write. With a durable store it is exactly submit() then
    result(); with the django store call it outside ``transaction.atomic()`` (the task cannot
    start before the row is committed)."""
    kwargs = {} if kwargs is None else kwargs
    store = default_store()
    if store.durable or immediate_mode():
        return submit_many([(task, args, kwargs)])[0].result(timeout)
    deadline = None if timeout is None else time.monotonic() + timeout
    client = default_client()
    checked = _check_call(task, args, kwargs)
    client.known_names()  # connects this thread
    _check_agreement(client, store)
    msg = _make_submit(checked, stored=False)
    wait = WAIT_CHUNK if timeout is None else min(WAIT_CHUNK, max(0.0, timeout))  # longer: handle.result() goes on
    accepted, info = client.exchange([msg, Query(msg.task_id, float(wait))], wait=wait)
    if isinstance(accepted, Error):
        raise_error(accepted)  # refused: the Query's reply (not_found) was read with it
    client.known_names().add(msg.name)
    handle = TaskHandle(msg.task_id, msg.name, client, store)
    if isinstance(info, Error):
        raise_error(info)
    assert isinstance(info, TaskInfo), info
    if info.status in FINAL_STATUSES:
        handle._final = info
    elif deadline is not None and time.monotonic() >= deadline:
        raise ResultTimeout(f"task {handle.id} is still {info.status} after {timeout}s")
    return handle.result(None if deadline is None else max(0.0, deadline - time.monotonic()))


def submit_many(calls: Iterable[tuple], client: Client | None = None, store: Store | None = None) -> list[TaskHandle]:
    """Submit many calls, each ``(task, args)`` or ``(task, args, kwargs)``: one store
    transaction for all the rows and one write to the supervisor."""
    store = store or default_store()
    client = client or default_client()
    checked = [_check_call(c[0], c[1], c[2] if len(c) > 2 else {}) for c in calls]
    return _submit_checked(checked, client, store) if checked else []


def _submit_checked(checked: list[_Checked], client: Client, store: Store) -> list[TaskHandle]:
    """submit_many's work once the calls are checked; submit() comes here directly."""
    durable = store.durable
    if immediate_mode():
        return _run_inline([_make_submit(c, durable) for c in checked], client, store)
    try:
        known = client.known_names()  # connects this thread
        _check_agreement(client, store)
        up = True
    except SupervisorUnavailable:
        if not durable:
            raise
        up, known = False, set()
    # Durable: no reply needed when the supervisor accepted every name already (a refusal is recorded
    # in the row). Memory: a batch asks for refusals only, then one barrier reply (Client.submit_quietly).
    if durable:
        reply = not (up and all(c[0] in known for c in checked))
    else:
        reply = len(checked) == 1  # one Submit: its Accepted is as cheap as a barrier's reply
    msgs = [_make_submit(c, durable, reply) for c in checked]
    data = client.encode(msgs)  # a frame too large fails here, before a row is written
    if durable:
        store.insert([row_of(m) for m in msgs])
    store.after_commit(lambda: _notify(client, msgs, up, data))
    return [TaskHandle(m.task_id, m.name, client, store) for m in msgs]


def _notify(client: Client, msgs: list[Submit], up: bool, data: bytes) -> None:
    """Tell the supervisor (once the rows are committed); a durable row waits if it is down."""
    if not up:
        log.warning("no supervisor at %s; %d task(s) stored, to run when one starts", client.path, len(msgs))
        return
    try:
        if msgs and not msgs[0].reply:
            if msgs[0].stored:
                client.send_only(data)
                return
            refusals = client.submit_quietly(msgs, data)
            if refusals:
                raise_error(refusals[0])
            return
        replies = client.exchange(msgs, data=data)
    except SupervisorUnavailable as exc:
        if not msgs[0].stored:
            raise  # memory store: nothing waits anywhere, the caller must know
        log.warning("%s; %d task(s) stored, to run when a supervisor starts", exc, len(msgs))
        return
    known = client.known_names()
    for msg, reply in zip(msgs, replies, strict=True):
        if isinstance(reply, Error):
            raise_error(reply)
        known.add(msg.name)


def _run_inline(msgs: list[Submit], client: Client, store: Store) -> list[TaskHandle]:
    from .immediate import run_inline

    rows = [row_of(m) for m in msgs]
    if store.durable:
        store.insert(rows)
    handles = [TaskHandle(m.task_id, m.name, client, store) for m in msgs]

    def run() -> None:
        for msg, row, handle in zip(msgs, rows, handles, strict=True):
            info = run_inline(msg, row, store)
            if not store.durable:
                handle._inline = info

    store.after_commit(run)
    return handles


def get(task_id: str) -> TaskHandle:
    """A handle for a task submitted anywhere, by id."""
    return TaskHandle(task_id)


def cancel(task_id: str) -> str:
    return TaskHandle(task_id).cancel()


def stats() -> dict:
    """The supervisor's stats as a dict (see docs/operations.md for the keys)."""
    reply = default_client().request(StatsRequest())
    return reply.data  # type: ignore[attr-defined]
