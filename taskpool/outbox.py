"""A worker's frames to the supervisor, with the Done frames of quick tasks sent in batches.

Why: with tasks sent ahead (``--prefetch``) a worker finishing many tiny tasks woke the
supervisor's loop once per ``Done``, and that wake-up, not the task, was the cost. The
worker now *holds* a Done while the next task is already in its inbox and is quick, and
writes the held frames together: when ``HOLD_MAX`` are held, before any other frame (order
is kept), before it blocks for more work, and at the latest ``HOLD_AGE`` after the first
was held. The last is a watchdog thread, started on first use, for a task expected to be
quick that runs long: without it, the Done before it would wait for it (and a timeout
could be charged to the wrong task).
"""

from __future__ import annotations

import threading
import time

from .protocol import Message, encode
from .transport import Channel

HOLD_MAX = 4  # Done frames held at most (the supervisor refills a worker at half its prefetch)
HOLD_AGE = 0.002  # seconds the first held Done may wait, give or take a GIL switch interval


class Outbox:
    """Every frame a serving worker sends goes through here (one lock, one order)."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.held: list[bytes] = []
        self.held_since = 0.0
        self._lock = threading.Lock()
        self._armed = threading.Event()
        self._watchdog: threading.Thread | None = None

    def send(self, frame: bytes) -> None:
        """Write ``frame`` now, after whatever is held."""
        with self._lock:
            if self.held:
                frame = b"".join(self.held) + frame
                self.held.clear()
            self.channel.send_bytes(frame)

    def send_message(self, msg: Message) -> None:
        self.send(encode(msg))

    def hold(self, frame: bytes) -> None:
        """Keep a Done frame for the next write (written at once when ``HOLD_MAX`` are held)."""
        with self._lock:
            if not self.held:
                self.held_since = time.monotonic()
            self.held.append(frame)
            full = len(self.held) >= HOLD_MAX
        if full:
            self.flush()
            return
        if self._watchdog is None:
            self._watchdog = threading.Thread(target=self._watch, name="taskpool-outbox", daemon=True)
            self._watchdog.start()
        if not self._armed.is_set():  # set() takes a lock and notifies: not once per task of a burst
            self._armed.set()

    def flush(self) -> None:
        """Write the held frames, if any."""
        with self._lock:
            if self.held:
                data = b"".join(self.held)
                self.held.clear()
                self.channel.send_bytes(data)

    def _watch(self) -> None:
        """Write held frames older than ``HOLD_AGE``; sleep on the event while none are held."""
        while True:
            self._armed.wait()
            time.sleep(HOLD_AGE)
            with self._lock:
                if not self.held:
                    self._armed.clear()  # under the lock: a hold() after this sets it again
                    continue
                if time.monotonic() - self.held_since < HOLD_AGE:
                    continue
                data = b"".join(self.held)
                self.held.clear()
                try:
                    self.channel.send_bytes(data)
                except OSError:
                    return  # the supervisor is gone; the main thread finds out on its next read
