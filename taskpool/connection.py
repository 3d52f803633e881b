"""One client's connection to the supervisor: thread-safe, fork-safe, idempotent retries.

Each thread keeps its own connection (no lock held across a long ``result()``
wait), made again after a fork (a child never reuses its parent's socket) and
once after a broken connection. Every request is idempotent (task ids are made
by the client, so a re-sent Submit is recognised while the supervisor still holds
it), which makes that retry safe while no reply has come. A quiet batch
(``submit_quietly``) gets no reply until its end, so it is never sent twice: it
goes only on a connection found clean just before, and a break after that raises.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence

from .config import client_spin
from .errors import InvalidArguments, ProtocolError, RemoteError, SupervisorUnavailable, TaskNotFound, UnknownTask
from .protocol import (
    DEFAULT_MAX_FRAME,
    MAGIC,
    PROTOCOL_VERSION,
    Accepted,
    Error,
    Hello,
    Message,
    Query,
    QueryMany,
    TaskInfo,
    TaskInfos,
    Welcome,
    encode,
)
from .transport import Channel, Closed, connect

DEFAULT_TIMEOUT = 10.0
_BARRIER = encode(QueryMany([]))  # answered in order, after every request before it (submit_quietly)
_ERRORS = {"unknown_task": UnknownTask, "not_found": TaskNotFound}


def raise_error(reply: Error) -> None:
    raise _ERRORS.get(reply.code, RemoteError)(reply.code, reply.message)


class Client:
    """Thread-safe, fork-safe access to one supervisor socket."""

    def __init__(self, path: str, timeout: float = DEFAULT_TIMEOUT, max_frame: int = DEFAULT_MAX_FRAME,
                 spin: float | None = None) -> None:
        self.path = path
        self.timeout = timeout
        self.max_frame = max_frame
        self.spin = client_spin() if spin is None else spin  # seconds a reply is polled for before sleeping
        self.welcome: Welcome | None = None  # the last handshake's answer (store, spool)
        self._local = threading.local()

    def _channel(self) -> Channel:
        local = self._local
        channel = getattr(local, "channel", None)
        if channel is not None and local.pid == os.getpid():
            return channel
        if channel is not None:
            channel.close()  # inherited across fork: this process's copy only
        channel = Channel(connect(self.path, self.timeout), self.max_frame, spin=self.spin)
        send_error: OSError | None = None
        try:
            channel.send(Hello(MAGIC, PROTOCOL_VERSION))
        except OSError as exc:  # a refusal may already be waiting to be read
            send_error = exc
        try:
            reply = channel.recv()
        except (OSError, Closed, ProtocolError) as exc:
            channel.close()
            why = send_error or exc
            raise SupervisorUnavailable(f"the supervisor at {self.path} did not answer the handshake: {why}") from None
        if isinstance(reply, Error):
            channel.close()
            raise_error(reply)
        if not isinstance(reply, Welcome):
            channel.close()
            raise SupervisorUnavailable(f"unexpected handshake reply {type(reply).__name__} from {self.path}")
        self.welcome = reply
        local.channel, local.pid = channel, os.getpid()
        local.known_names = set()  # task names this supervisor has accepted on this connection
        return channel

    def connect(self) -> Welcome:
        """Make sure this thread is connected; returns the supervisor's handshake."""
        self._channel()
        assert self.welcome is not None
        return self.welcome

    def _forget(self) -> None:
        channel = getattr(self._local, "channel", None)
        if channel is not None:
            channel.close()
        self._local.channel = None

    def encode(self, msgs: Sequence[Message]) -> bytes:
        """The requests as one write; InvalidArguments if one would exceed the frame limit."""
        frames = [encode(m) for m in msgs]
        for msg, frame in zip(msgs, frames, strict=True):
            if len(frame) - 4 > self.max_frame:
                raise InvalidArguments(
                    f"{type(msg).__name__} is {len(frame) - 4} bytes encoded, over the {self.max_frame}-byte frame limit"
                )
        return b"".join(frames)

    def exchange(self, msgs: Sequence[Message], wait: float = 0.0, data: bytes | None = None) -> list[Message]:
        """Send requests in one write and read one reply each (Error replies included).
        ``data``: the requests already encoded by ``encode``."""
        data = self.encode(msgs) if data is None else data

        def read(channel: Channel, replies: list[Message]) -> None:
            for _ in msgs:
                replies.append(channel.recv())

        return self._converse(data, wait, read)

    def submit_quietly(self, msgs: Sequence[Message], data: bytes) -> list[Error]:
        """Send ``Submit(reply=False)`` requests (``data``, encoded by ``encode``) and a barrier,
        an empty ``QueryMany``: the supervisor answers only a refusal, and the barrier's empty
        ``TaskInfos`` comes after every answer to the requests before it. Returns the refusals.
        A batch then costs one reply frame, not one ``Accepted`` per task to encode and decode.
        An older supervisor answers every ``Submit`` with ``Accepted``: those are skipped."""

        ids = {m.task_id for m in msgs}  # type: ignore[attr-defined]

        def read(channel: Channel, replies: list[Message]) -> None:
            for _ in range(len(msgs) + 1):
                reply = channel.recv()
                replies.append(reply)
                if isinstance(reply, TaskInfos) and not reply.infos:
                    return
                if not (isinstance(reply, Error) or (isinstance(reply, Accepted) and reply.task_id in ids)):
                    raise ProtocolError(f"unexpected {type(reply).__name__} while waiting for a batch's barrier")
            raise ProtocolError("no reply to the barrier after a reply to every submit")

        if not self._channel().quiet():  # the supervisor went away, or an interrupted call left replies
            self._forget()
        replies = self._converse(data + _BARRIER, 0.0, read, resend=False)
        return [r for r in replies if isinstance(r, Error)]

    def _converse(self, data: bytes, wait: float, read: Callable[[Channel, list[Message]], None],
                  resend: bool = True) -> list[Message]:
        """Write ``data`` and ``read`` the replies to it. A broken connection is tried once more,
        with everything sent again, only while no reply has come (and never with ``resend``
        false): once one has, the supervisor acted on the requests (a refusal it closed after is
        raised as such)."""
        replies: list[Message] = []
        for attempt in (1, 2):
            channel = self._channel()
            replies = []
            try:
                channel.settimeout(self.timeout + wait)
                channel.send_bytes(data)
                read(channel, replies)
                break
            except TimeoutError:
                self._forget()
                waited = self.timeout + wait
                raise SupervisorUnavailable(f"the supervisor at {self.path} did not reply within {waited:.1f}s") from None
            except ProtocolError:
                self._forget()  # the stream is out of step; a new connection starts clean
                raise
            except (Closed, OSError) as exc:
                self._forget()
                refused = next((r for r in replies if isinstance(r, Error)), None)
                if refused is not None:
                    raise_error(refused)
                if attempt == 2 or replies or not resend:
                    raise SupervisorUnavailable(f"lost the connection to the supervisor at {self.path}: {exc}") from None
        if any(isinstance(r, Error) and r.code in ("bad_frame", "bad_version", "forbidden") for r in replies):
            self._forget()  # the supervisor closes the connection after these
        return replies

    def known_names(self) -> set[str]:
        """Task names the supervisor accepted on this thread's connection: a stored submit
        of one of them can go without waiting for a reply."""
        self._channel()
        return self._local.known_names

    def send_only(self, data: bytes) -> None:
        """Write requests that get no reply (stored submits of known names); one reconnect
        on a broken connection (a re-sent Submit is recognised by its id)."""
        for attempt in (1, 2):
            channel = self._channel()
            try:
                channel.settimeout(self.timeout)
                channel.send_bytes(data)
                return
            except TimeoutError:
                self._forget()
                raise SupervisorUnavailable(f"the supervisor at {self.path} did not read within {self.timeout:.1f}s") from None
            except OSError as exc:
                self._forget()
                if attempt == 2:
                    raise SupervisorUnavailable(f"lost the connection to the supervisor at {self.path}: {exc}") from None

    def request(self, msg: Message, wait: float = 0.0) -> Message:
        """Send one request and return its reply; raises RemoteError for an Error reply."""
        reply = self.exchange([msg], wait)[0]
        if isinstance(reply, Error):
            raise_error(reply)
        return reply

    def query_many(self, task_ids: list[str]) -> list[TaskInfo | None]:
        """The states of many tasks in one round trip; None for a task the supervisor does
        not hold. The list may be shorter than ``task_ids`` (a frame's worth): ask again."""
        reply = self.request(QueryMany(task_ids))
        assert isinstance(reply, TaskInfos), reply
        try:
            return [None if entry is None else TaskInfo(*entry) for entry in reply.infos]
        except TypeError as exc:
            raise ProtocolError(f"malformed TaskInfos entry: {exc}") from None

    def query(self, task_id: str, wait: float = 0.0) -> TaskInfo:
        reply = self.request(Query(task_id, float(wait)), wait=wait)
        assert isinstance(reply, TaskInfo), reply
        return reply
