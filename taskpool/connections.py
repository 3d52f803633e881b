"""The supervisor's side of client connections: admission, handshake, replies, waiters.

Owned by the supervisor's loop (one owner, no threads). It admits a connection
only for an allowed peer uid (SO_PEERCRED), answers the handshake, hands every
other request to the supervisor's ``handle_request``, and holds the clients that
wait for a task to finish (``Query(wait=...)``) until the ledger says it has, or
their wait runs out. Output is buffered per connection and flushed once per loop
pass, so many replies share one syscall; a client that stops reading is dropped
when its buffer passes ``client_buffer`` bytes, never the supervisor's memory.
"""

from __future__ import annotations

import errno
import heapq
import itertools
import logging
import os
import selectors
import socket
from collections.abc import Callable, Iterator

from .errors import ProtocolError
from .protocol import MAGIC, PROTOCOL_VERSION, Error, Hello, Message, Welcome, encode
from .records import record
from .transport import Closed, FramedConnection, peer_credentials

TYPE_CHECKING = False  # typing stays unimported at run time (docs/performance.md, idle RSS)
if TYPE_CHECKING:
    from typing import Any

log = logging.getLogger("taskpool.supervisor")

ACCEPTS_PER_PASS = 64
REQUESTS_PER_PASS = 64  # a client's requests handled per loop pass; the rest wait for the next pass
ACCEPT_PAUSE = 0.25  # seconds without accepting once descriptors run out
RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


@record(eq=False)
class Client:
    conn: FramedConnection
    greeted: bool = False
    closing: bool = False  # close once the outbox is flushed
    closed: bool = False


@record(eq=False)
class Waiter:
    client: Client
    task_id: str
    done: bool = False


RequestHandler = Callable[[Client, Message, float], "Message | None"]


class ConnectionHub:
    def __init__(
        self,
        selector: selectors.BaseSelector,
        max_frame: int,
        max_outbox: int,
        allowed_uids: set[int],
        allowed_gid: int | None,
        handle_request: RequestHandler,
        store: str,
        spool: str,
    ) -> None:
        self.selector = selector
        self.max_frame = max_frame
        self.max_outbox = max_outbox
        self.allowed_uids = allowed_uids
        self.allowed_gid = allowed_gid
        self.handle_request = handle_request
        self.store = store
        self.spool = spool
        self.clients: dict[int, Client] = {}
        self.dirty: set[FramedConnection] = set()
        self.dirty_work: set[FramedConnection] = set()  # flushed first: see mark_work
        self.waiters: dict[str, list[Waiter]] = {}
        self.deadlines: list[tuple[float, int, Waiter]] = []
        self._seq = itertools.count()
        self._next_accept_log = 0.0
        self.backlogged: set[Client] = set()  # clients with requests received and not yet handled

    # -- admission ---------------------------------------------------------

    def accept(self, listener: socket.socket, now: float) -> bool:
        """Admit waiting connections. False when the process is out of descriptors (or
        kernel memory): the caller stops watching the listener for ``ACCEPT_PAUSE``, as
        it would stay readable and spin the loop; waiting clients stay queued."""
        for _ in range(ACCEPTS_PER_PASS):
            try:
                sock, _addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return True
            except OSError as exc:
                if exc.errno not in RESOURCE_ERRORS:
                    log.error("accept failed: %s", exc)
                    return True
                if now >= self._next_accept_log:
                    log.error("accept failed: %s; new connections wait (this is logged at most once a minute)", exc)
                    self._next_accept_log = now + 60.0
                return False
            self._admit(sock)
        return True

    def _admit(self, sock: socket.socket) -> None:
        conn = FramedConnection(sock, self.max_frame, self.max_outbox)
        conn.peer = peer_credentials(sock)
        client = Client(conn)
        self.clients[conn.fd] = client
        self.selector.register(sock, selectors.EVENT_READ, self._on_event(client))
        pid, uid, gid = conn.peer
        if uid not in self.allowed_uids and not (self.allowed_gid is not None and gid == self.allowed_gid):
            log.warning("refused a connection from uid %d (pid %d)", uid, pid)
            self.refuse(client, Error("forbidden", f"uid {uid} may not use this supervisor"))

    def _on_event(self, client: Client) -> Callable[[Any, int, float], None]:
        def on_event(key: Any, mask: int, now: float) -> None:
            if client.closed:
                return
            if mask & selectors.EVENT_WRITE:
                self.flush(client.conn)
            if mask & selectors.EVENT_READ and not client.closing and not client.closed and client not in self.backlogged:
                self._read(client, now)  # a backlogged client's requests are taken up by resume()

        return on_event

    def _read(self, client: Client, now: float) -> None:
        """Handle up to ``REQUESTS_PER_PASS`` of the client's requests. A burst of 500
        submits handled in one pass left the workers idle (their tasks sent ahead done, their
        Dones unread) for milliseconds; the rest now wait in the decoder for the next pass,
        and the socket is not read meanwhile, so the client's burst stays in its own buffers."""
        backlogged = client in self.backlogged
        budget = REQUESTS_PER_PASS
        messages: Iterator[Message] = iter(())
        try:
            messages = client.conn.decoder.feed(b"") if backlogged else client.conn.read()
            for msg in messages:
                if client.closing:
                    break
                self._handle(client, msg, now)
                budget -= 1
                if budget == 0:
                    self.backlogged.add(client)
                    return
            if backlogged:
                self.backlogged.discard(client)
        except Closed:
            self.drop(client)
        except ProtocolError as exc:
            log.warning("bad frame from client pid %s: %s", client.conn.peer[0], exc)
            self.refuse(client, Error("bad_frame", str(exc)))
        finally:
            close = getattr(messages, "close", None)
            if close is not None:
                close()  # the frames not handled stay in the decoder's buffer

    def resume(self, now: float) -> None:
        """Handle the next requests of clients that had more than one pass's worth."""
        if not self.backlogged:
            return
        for client in list(self.backlogged):
            if client.closed or client.closing:
                self.backlogged.discard(client)
            else:
                self._read(client, now)

    def _handle(self, client: Client, msg: Message, now: float) -> None:
        if client.greeted:
            reply = self.handle_request(client, msg, now)
            if reply is not None:
                self.reply(client, reply)
        elif not isinstance(msg, Hello) or msg.magic != MAGIC:
            self.refuse(client, Error("bad_version", "expected a Hello frame first"))
        elif msg.version != PROTOCOL_VERSION:
            text = f"protocol version {msg.version} is not supported (this supervisor speaks {PROTOCOL_VERSION})"
            self.refuse(client, Error("bad_version", text))
        else:
            client.greeted = True
            self.reply(client, Welcome(PROTOCOL_VERSION, os.getpid(), self.store, self.spool))

    # -- replies -------------------------------------------------------------

    def reply(self, client: Client, msg: Message) -> None:
        if client.closed or client.closing:
            return
        try:
            client.conn.send(msg)
        except ProtocolError as exc:
            log.warning("dropping client pid %s: %s", client.conn.peer[0], exc)
            self.drop(client)
            return
        except Closed:
            self.drop(client)
            return
        self.dirty.add(client.conn)

    def reply_frame(self, client: Client, frame: bytes) -> None:
        """A reply already encoded (and checked against the frame limit)."""
        if client.closed or client.closing:
            return
        try:
            client.conn.send_bytes(frame)
        except (Closed, ProtocolError) as exc:
            if isinstance(exc, ProtocolError):
                log.warning("dropping client pid %s: %s", client.conn.peer[0], exc)
            self.drop(client)
            return
        self.dirty.add(client.conn)

    def refuse(self, client: Client, error: Error) -> None:
        """Send a last error, then close once it is written."""
        client.closing = True
        if len(client.conn.outbox) > self.max_outbox:
            self.drop(client)  # it is not reading: no point waiting to tell it
            return
        client.conn.outbox += encode(error)  # after what is queued: a half-sent frame stays whole
        self.dirty.add(client.conn)

    def drop(self, client: Client) -> None:
        if client.closed:
            return
        client.closed = True
        self.backlogged.discard(client)
        self.clients.pop(client.conn.fd, None)
        self.dirty.discard(client.conn)
        self.unregister(client.conn)

    def close_all(self) -> None:
        for client in list(self.clients.values()):
            self.drop(client)

    # -- waiters -------------------------------------------------------------

    def wait_for(self, client: Client, task_id: str, deadline: float) -> None:
        waiter = Waiter(client, task_id)
        self.waiters.setdefault(task_id, []).append(waiter)
        heapq.heappush(self.deadlines, (deadline, next(self._seq), waiter))

    def finished(self, task_id: str, info_frame: bytes) -> None:
        """Answer the clients waiting for ``task_id`` (``info_frame``: its encoded TaskInfo),
        written at once: the rest of the loop pass (the worker's bookkeeping, its next task)
        would only delay them."""
        for waiter in self.waiters.pop(task_id, ()):
            if not waiter.done:
                waiter.done = True
                self.reply_frame(waiter.client, info_frame)
                if not waiter.client.closed:
                    self.flush(waiter.client.conn)

    def expire(self, now: float, info_of: Callable[[str], Message]) -> None:
        while self.deadlines and self.deadlines[0][0] <= now:
            waiter = heapq.heappop(self.deadlines)[2]
            if not waiter.done:
                waiter.done = True
                self.reply(waiter.client, info_of(waiter.task_id))
                pending = self.waiters.get(waiter.task_id)
                if pending is not None:
                    pending.remove(waiter)
                    if not pending:
                        del self.waiters[waiter.task_id]

    def next_deadline(self) -> float | None:
        return self.deadlines[0][0] if self.deadlines else None

    # -- output --------------------------------------------------------------

    def mark_dirty(self, conn: FramedConnection) -> None:
        """``conn`` has output to write at the end of this loop pass."""
        self.dirty.add(conn)

    def mark_work(self, conn: FramedConnection) -> None:
        """``conn`` (a worker's) has a frame that starts work: written before the replies of
        this loop pass, so the worker runs while a client reads its acknowledgement."""
        self.dirty_work.add(conn)

    def flush_output(self) -> None:
        if self.dirty_work:
            work, self.dirty_work = self.dirty_work, set()
            for conn in work:
                self.flush(conn)
        dirty, self.dirty = self.dirty, set()
        for conn in dirty:
            self.flush(conn)

    def flush(self, conn: FramedConnection) -> None:
        if conn.closed:
            return
        try:
            done = conn.flush()
        except Closed:
            client = self._client_of(conn)
            if client is not None:
                self.drop(client)
            return
        if done:
            client = self._client_of(conn)
            if client is not None and client.closing:
                self.drop(client)
                return
        if done == conn.watching_write:  # the selector is told only of a change, not once a write
            key = self.selector.get_map().get(conn.fd)
            if key is None:
                return
            conn.watching_write = not done
            self.selector.modify(conn.sock, selectors.EVENT_READ | (0 if done else selectors.EVENT_WRITE), key.data)

    def _client_of(self, conn: FramedConnection) -> Client | None:
        """The client whose connection ``conn`` is (None for a worker's or the recorder's)."""
        client = self.clients.get(conn.fd)
        return client if client is not None and client.conn is conn else None

    def unregister(self, conn: FramedConnection) -> None:
        try:
            self.selector.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.close()
