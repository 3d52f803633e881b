"""All socket code: the listening socket, peer credentials and framed connections.

``FramedConnection`` is the supervisor's non-blocking side (one per client and per
worker channel): reads feed a protocol.Decoder, writes go to a bounded buffer that
the loop flushes when the socket is writable. ``Channel`` is the blocking side used
by clients and workers. A clean close (EOF between frames) is told apart from a
cut-off frame (EOF inside one), as multiprocessing.connection does.
"""

from __future__ import annotations

import errno
import grp
import logging
import math
import os
import resource
import select
import socket
import stat
import struct
import time
from collections.abc import Callable, Iterator

from .errors import ConfigError, ProtocolError, SupervisorUnavailable
from .protocol import Decoder, Message, encode

log = logging.getLogger("taskpool.supervisor")

_UCRED = struct.Struct("3i")
READ_SIZE = 256 * 1024
CHANNEL_READ_SIZE = 64 * 1024  # each Channel keeps a read buffer this size


class Closed(Exception):
    """The peer closed the connection; ``clean`` is False when it cut a frame short."""

    def __init__(self, clean: bool) -> None:
        super().__init__("connection closed" if clean else "connection closed inside a frame")
        self.clean = clean


def ensure_private_dir(path: str) -> None:
    """Create ``path`` (mode 0700) if missing; refuse a symlink or a non-directory."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except FileExistsError:
        raise ConfigError(f"spool {path!r} exists and is not a directory") from None
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"spool {path!r} is not a plain directory")


def _clear_stale_socket(path: str) -> None:
    """Remove a socket file nobody listens on; refuse anything else at ``path``."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(info.st_mode):
        raise ConfigError(f"socket path {path} is a symbolic link; refusing to use it")
    if not stat.S_ISSOCK(info.st_mode):
        raise ConfigError(f"socket path {path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(path)  # stale: its supervisor is gone
        return
    except OSError as exc:
        raise ConfigError(f"cannot check the existing socket {path}: {exc}") from None
    finally:
        probe.close()
    raise ConfigError(f"another supervisor is already listening on {path}")


def group_id(group: str | None) -> int | None:
    """The gid of the socket group, or ConfigError naming a group that does not exist."""
    if group is None:
        return None
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ConfigError(f"socket group {group!r} does not exist") from None


def listen(path: str, mode: int = 0o600, group: str | None = None, backlog: int = 1024) -> socket.socket:
    """Bind the supervisor's socket with private permissions from the first instant."""
    ensure_private_dir(os.path.dirname(path) or ".")
    _clear_stale_socket(path)
    gid = group_id(group)
    gid = -1 if gid is None else gid
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        sock.bind(path)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot bind {path}: {exc}") from None
    finally:
        os.umask(old_umask)
    try:
        if gid != -1:
            os.chown(path, -1, gid)
        os.chmod(path, mode)
    except PermissionError as exc:
        sock.close()
        raise ConfigError(f"cannot give {path} group {group!r} and mode {mode:o}: {exc.strerror}") from None
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end (Linux SO_PEERCRED)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    return pid, uid, gid


def connect(path: str, timeout: float | None) -> socket.socket:
    """A blocking connection to the supervisor, or SupervisorUnavailable naming the path."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        sock.close()
        raise SupervisorUnavailable(f"no supervisor is listening on {path} ({exc.strerror})") from None
    except OSError as exc:
        sock.close()
        raise SupervisorUnavailable(f"cannot connect to the supervisor at {path}: {exc}") from None
    return sock


_scratch: bytearray | None = None


def _loop_scratch() -> bytearray:
    """The one read buffer of the supervisor's loop (single-threaded; every read is copied
    out by Decoder.feed before the next). ``recv(READ_SIZE)`` would mmap a fresh 256 KiB
    and unmap it again on every read."""
    global _scratch
    if _scratch is None:
        _scratch = bytearray(READ_SIZE)
    return _scratch


class FramedConnection:
    """Non-blocking framed socket owned by the supervisor's loop."""

    __slots__ = ("sock", "fd", "decoder", "outbox", "max_outbox", "peer", "closed", "watching_write")

    def __init__(self, sock: socket.socket, max_frame: int, max_outbox: int) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.fd = sock.fileno()
        self.decoder = Decoder(max_frame)
        self.outbox = bytearray()
        self.max_outbox = max_outbox
        self.peer: tuple[int, int, int] | None = None
        self.closed = False
        self.watching_write = False  # the loop's selector also waits for room to write (ConnectionHub.flush)

    def read(self) -> Iterator[Message]:
        """Messages from what the socket has now. Raises Closed or ProtocolError."""
        scratch = _loop_scratch()
        try:
            n = self.sock.recv_into(scratch)
        except (BlockingIOError, InterruptedError):
            return iter(())
        except ConnectionResetError:
            raise Closed(clean=self.decoder.pending == 0) from None
        if not n:
            raise Closed(clean=self.decoder.pending == 0)
        return self.decoder.feed(memoryview(scratch)[:n])  # feed copies: the buffer is free again

    def send(self, msg: Message) -> None:
        """Queue a frame; raise ProtocolError when the peer owes too much unread data."""
        self.send_bytes(encode(msg))

    def send_bytes(self, frame: bytes) -> None:
        if self.closed:
            raise Closed(clean=True)
        if len(self.outbox) + len(frame) > self.max_outbox:
            self.flush()  # a burst of replies: write what the peer will take before judging it
            if len(self.outbox) + len(frame) > self.max_outbox:
                raise ProtocolError(f"peer is not reading its replies ({len(self.outbox)} bytes unsent)")
        self.outbox += frame

    def flush(self) -> bool:
        """Write what the socket takes; True when everything is out (or nothing can be)."""
        if self.closed:
            return True  # closed in this loop pass after output was queued: drop it
        while self.outbox:
            try:
                sent = self.sock.send(self.outbox)
            except (BlockingIOError, InterruptedError):
                return False
            except OSError as exc:
                if exc.errno in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                    raise Closed(clean=True) from None
                raise
            del self.outbox[:sent]
        return True

    def close(self) -> None:
        self.closed = True
        self.outbox.clear()
        try:
            self.sock.close()
        except OSError:
            pass


_POLL_MAX_MS = 2**31 - 1  # poll() takes a C int of milliseconds


def _poll_ms(deadline: float | None) -> int | None:
    """The poll() timeout left until ``deadline`` (monotonic; None: no limit)."""
    if deadline is None:
        return None
    return min(_POLL_MAX_MS, max(0, math.ceil((deadline - time.monotonic()) * 1000)))


def _wait_for(fd: int, write: bool, deadline: float | None) -> bool:
    """Sleep until ``fd`` is readable (or writable) or ``deadline`` passes; False at the
    deadline. poll() takes any descriptor number (gevent patches it to yield to other
    greenlets); where it is missing (eventlet's green select has none) select() serves."""
    poll = getattr(select, "poll", None)
    if poll is not None:
        waiter = poll()
        waiter.register(fd, select.POLLOUT if write else select.POLLIN)
        return bool(waiter.poll(_poll_ms(deadline)))
    timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
    ready = select.select([], [fd], [fd], timeout) if write else select.select([fd], [], [fd], timeout)
    return any(ready)


class Channel:
    """Framed socket for clients and workers: calls block (up to ``timeout``), the socket
    does not. Reads go into one buffer kept for the channel (a fresh 256 KiB ``recv``
    costs mmap, mremap and munmap each time), and a read that finds nothing first polls
    for up to ``spin`` seconds, yielding the CPU between tries, before it sleeps: on a
    VM, waking a sleeping process costs 30-70 us, more than a task round trip's work."""

    __slots__ = ("sock", "fd", "decoder", "timeout", "spin", "divert", "before_sleep", "bytes_read", "_inbox", "_eof",
                 "_scratch")

    def __init__(self, sock: socket.socket, max_frame: int, trusted: bool = False, spin: float = 0.0) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.timeout: float | None = sock.gettimeout()
        self.spin = spin  # checked by config (finite, at most MAX_SPIN)
        sock.setblocking(False)  # waits are ours: poll() with the timeout, after the spin
        self.decoder = Decoder(max_frame, trusted)  # trusted: the peer is our own supervisor
        self._inbox: list[Message] = []
        self._eof = False
        self._scratch = bytearray(CHANNEL_READ_SIZE)
        # Called with each message as it is decoded; one it returns True for is not queued (a
        # worker takes Cancel frames aside the moment they arrive, without scanning its queue).
        self.divert: Callable[[Message], bool] | None = None
        # Called when a read found nothing in its spin and is about to sleep (a worker shows
        # itself idle then, not after every task: a title costs a few hundred ns each way).
        self.before_sleep: Callable[[], None] | None = None
        self.bytes_read = 0  # since the channel was made

    def _take(self) -> bool:
        """Read what has arrived without waiting; False when nothing had."""
        try:
            n = self.sock.recv_into(self._scratch)
        except (BlockingIOError, InterruptedError):
            return False
        self.bytes_read += n
        if n == 0:
            self._eof = True
        elif self.divert is None:
            self._inbox.extend(self.decoder.feed(memoryview(self._scratch)[:n]))
        else:
            divert, inbox = self.divert, self._inbox
            for msg in self.decoder.feed(memoryview(self._scratch)[:n]):
                if not divert(msg):
                    inbox.append(msg)
        return True

    def _fill(self) -> None:
        """Read at least once: at once if something is there, else after a spin, else after
        sleeping in poll(); raises TimeoutError when ``timeout`` passes with nothing."""
        if self._take():
            return
        started = time.monotonic()
        deadline = None if self.timeout is None else started + self.timeout
        if self.spin > 0:
            spin_until = started + (self.spin if self.timeout is None else min(self.spin, self.timeout))
            while time.monotonic() < spin_until:
                os.sched_yield()  # let the process we wait on have this core
                if self._take():
                    return
        if self.before_sleep is not None:
            self.before_sleep()
        if not _wait_for(self.fd, False, deadline):
            raise TimeoutError("timed out")
        self._take()

    def pending(self) -> list[Message]:
        """Messages already received, after taking in whatever has arrived without
        blocking (a worker checks for Cancel frames before it starts a task sent ahead)."""
        if not self._eof:
            self._take()
        return self._inbox

    def buffered(self) -> int:
        """Messages received and not yet taken, without reading the socket."""
        return len(self._inbox)

    def quiet(self) -> bool:
        """Nothing unread, in this channel or in the socket, and the peer has not closed: the
        state after every request was answered. Judged without waiting or consuming data."""
        if self._eof or self._inbox or self.decoder.pending:
            return False
        try:
            self.sock.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            return False
        return False  # b"": the peer closed; data: a reply nobody read

    def send(self, msg: Message) -> None:
        self.send_bytes(encode(msg))

    def send_bytes(self, frame: bytes) -> None:
        """Write all of ``frame``; ``timeout`` bounds the whole write, as for ``sendall``."""
        try:
            sent = self.sock.send(frame)
        except (BlockingIOError, InterruptedError):
            sent = 0
        if sent == len(frame):
            return
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        with memoryview(frame) as whole:  # released on the way out, even by a TimeoutError
            while sent < len(frame):
                if not _wait_for(self.fd, True, deadline):
                    raise TimeoutError("timed out")
                try:
                    sent += self.sock.send(whole[sent:])
                except (BlockingIOError, InterruptedError):
                    pass

    def recv(self) -> Message:
        """The next message; raises Closed at EOF, TimeoutError past the timeout."""
        while not self._inbox:
            if self._eof:
                raise Closed(clean=self.decoder.pending == 0)
            self._fill()
        return self._inbox.pop(0)

    def settimeout(self, timeout: float | None) -> None:
        """Seconds each wait may take (None: no limit); no system call."""
        if timeout is not None and not timeout >= 0:
            raise ValueError(f"timeout must be 0 or more seconds, not {timeout!r}")
        self.timeout = timeout

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


MAX_DESCRIPTORS = 65536  # the soft RLIMIT_NOFILE the supervisor asks for (never above the hard limit)


def raise_descriptor_limit() -> None:
    """One descriptor per client: lift the soft limit (often 1024) toward the hard one,
    as servers commonly do, so a thousand connections do not exhaust it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = MAX_DESCRIPTORS if hard == resource.RLIM_INFINITY else min(hard, MAX_DESCRIPTORS)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-file limit from %d: %s", soft, exc)
