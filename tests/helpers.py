"""Start real supervisors for tests, wait on conditions, and clean up every pid."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

import taskpool
from taskpool.client import Client, submit_many
from taskpool.errors import SupervisorUnavailable
from taskpool.protocol import MAGIC, PROTOCOL_VERSION, Decoder, Hello, Message, StatsRequest, Welcome, encode
from taskpool.stores import open_store

TESTS_DIR = Path(__file__).resolve().parent
ROOT = TESTS_DIR.parent


def wait_until(condition: Callable[[], Any], timeout: float = 10.0, message: str = "condition") -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        try:
            value = condition()
        except (SupervisorUnavailable, psutil.NoSuchProcess):
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


class RunningSupervisor:
    """A ``taskpool-supervisor`` subprocess with a spool under a temp dir."""

    def __init__(self, spool: Path, args: list[str], env: dict | None = None, cwd: Path | None = None,
                 store: str | None = None) -> None:
        self.spool = spool
        self.socket = str(spool / "taskpool.sock")
        self.log_path = spool.parent / f"supervisor-{os.getpid()}-{time.monotonic_ns()}.log"
        self.args = args
        self.seen_pids: set[int] = set()
        full_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), str(ROOT)])}
        full_env.pop("DJANGO_SETTINGS_MODULE", None)  # plain supervisors unless a test asks for Django
        full_env.update(env or {})
        self.log_file = open(self.log_path, "w")  # noqa: SIM115 - closed in cleanup()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "taskpool", "--spool", str(spool), *args],
            stdout=self.log_file, stderr=subprocess.STDOUT, env=full_env, cwd=str(cwd or spool.parent),
            start_new_session=True,
        )
        self.seen_pids.add(self.proc.pid)
        self.client = Client(self.socket, timeout=10.0)
        self.store_kind = store or (args[args.index("--store") + 1] if "--store" in args else "sqlite")
        self._store = None

    @property
    def store(self):
        """The store this supervisor writes to, opened from the test process when first used."""
        if self._store is None:
            self._store = open_store(self.store_kind, str(self.spool))
        return self._store

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        self.log_file.flush()
        return self.log_path.read_text()

    def stats(self) -> dict:
        data = self.client.request(StatsRequest()).data
        self.seen_pids.update(w["pid"] for w in data["workers"])
        return data

    def ready_workers(self) -> list[dict]:
        return [w for w in self.stats()["workers"] if w["state"] in ("idle", "busy")]

    def wait_ready(self, workers: int | None = None, timeout: float = 15.0) -> dict:
        def check() -> dict | None:
            if self.proc.poll() is not None:
                raise AssertionError(f"supervisor exited with {self.proc.returncode}:\n{self.log()}")
            data = self.stats()
            live = [w for w in data["workers"] if w["state"] in ("idle", "busy")]
            wanted = data["target_workers"] if workers is None else workers
            return data if len(live) == wanted and len(data["workers"]) == wanted else None

        return wait_until(check, timeout, "workers to be ready")

    def worker_pids(self) -> list[int]:
        return [w["pid"] for w in self.stats()["workers"]]

    def submit(self, task: Any, *args: Any, **kwargs: Any) -> taskpool.TaskHandle:
        """As taskpool.submit(), against this supervisor and its store."""
        return submit_many([(task, args, kwargs)], client=self.client, store=self.store)[0]

    def handle(self, task_id: str) -> taskpool.TaskHandle:
        return taskpool.TaskHandle(task_id, client=self.client, store=self.store)

    def signal(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)

    def wait_exit(self, timeout: float = 15.0) -> int:
        return self.proc.wait(timeout)

    def children(self) -> list[int]:
        try:
            return [p.pid for p in psutil.Process(self.proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def cleanup(self) -> None:
        """Stop the supervisor, then make sure every pid it ever had is gone."""
        self.seen_pids.update(self.children())
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for pid in self.seen_pids:
            try:
                proc = psutil.Process(pid)
                if proc.status() != psutil.STATUS_ZOMBIE and "taskpool" in " ".join(proc.cmdline() + [proc.name()]):
                    proc.kill()
            except psutil.NoSuchProcess:
                pass
        self.log_file.close()


def pid_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


class RawConnection:
    """A plain AF_UNIX socket speaking (or not) the wire format by hand."""

    def __init__(self, path: str, timeout: float = 10.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.decoder = Decoder(64 * 1024 * 1024)
        self.inbox: list[Message] = []

    def send(self, *msgs: Message) -> None:
        self.sock.sendall(b"".join(encode(m) for m in msgs))

    def send_bytes(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _read(self) -> bytes:
        try:
            return self.sock.recv(256 * 1024)
        except ConnectionResetError:  # the peer closed with our bytes unread: also an EOF
            return b""

    def recv(self) -> Message:
        while not self.inbox:
            data = self._read()
            if not data:
                raise EOFError("the supervisor closed the connection")
            self.inbox.extend(self.decoder.feed(data))
        return self.inbox.pop(0)

    def read_until_eof(self) -> list[Message]:
        """Every message left until the supervisor closes the connection."""
        msgs, self.inbox = self.inbox, []
        while True:
            data = self._read()
            if not data:
                return msgs
            msgs.extend(self.decoder.feed(data))

    def hello(self) -> Welcome:
        self.send(Hello(MAGIC, PROTOCOL_VERSION))
        reply = self.recv()
        assert isinstance(reply, Welcome), reply
        return reply

    def close(self) -> None:
        self.sock.close()
