"""Who may reach the supervisor: socket and spool permissions, peer credentials,
what may sit at the socket path, and what a client may name."""

from __future__ import annotations

import grp
import json
import os
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import sample_tasks
from helpers import ROOT, TESTS_DIR

import taskpool
from taskpool.client import Client
from taskpool.protocol import Decoder, StatsRequest

NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="changing uid and gid needs root")


def socket_group() -> grp.struct_group:
    """An existing group other than the one the test child takes as its primary gid."""
    for name in ("users", "staff", "adm", "daemon", "nogroup"):
        try:
            group = grp.getgrnam(name)
        except KeyError:
            continue
        if group.gr_gid not in (NOBODY, 0):
            return group
    pytest.skip("no suitable group for --socket-group")


def run_as(uid: int, gid: int, groups: list[int], action: Callable[[], object], timeout: float = 20.0) -> dict:
    """Fork, drop to uid/gid/groups, run ``action``; its outcome comes back through a pipe."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        try:
            os.close(read_fd)
            try:
                os.setgroups(groups)
                os.setgid(gid)
                os.setuid(uid)
                outcome = {"ok": True, "value": action()}
            except BaseException as exc:
                outcome = {
                    "ok": False, "type": type(exc).__name__, "message": str(exc),
                    "code": getattr(exc, "code", None), "errno": getattr(exc, "errno", None),
                }
            os.write(write_fd, json.dumps(outcome, default=str).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    data = bytearray()
    try:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, "the child did not report in time"
            readable, _, _ = select.select([read_fd], [], [], remaining)
            if readable:
                chunk = os.read(read_fd, 65536)
                if not chunk:
                    break
                data += chunk
    finally:
        os.close(read_fd)
        done, _status = os.waitpid(pid, os.WNOHANG)
        if done == 0:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    return json.loads(data)


def stats_pid(path: str) -> Callable[[], object]:
    return lambda: Client(path, timeout=5.0).request(StatsRequest()).data["pid"]


def raw_first_reply(path: str) -> Callable[[], object]:
    """Connect and, without sending anything, read what the supervisor says before closing."""

    def action() -> object:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(5.0)
        try:
            sock.connect(path)
            decoder, msgs = Decoder(), []
            while data := sock.recv(65536):
                msgs.extend(decoder.feed(data))
            return [[type(m).__name__, getattr(m, "code", None), getattr(m, "message", None)] for m in msgs]
        finally:
            sock.close()

    return action


def raw_connect(path: str) -> Callable[[], object]:
    def action() -> object:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
            return "connected"
        finally:
            sock.close()

    return action


@pytest.fixture
def public_spool():
    """A spool that other uids can traverse (0711), under a traversable temp dir, so
    that the socket file's own mode and the peer check are what is being tested."""
    base = Path(tempfile.mkdtemp(prefix="taskpool-security-"))
    base.chmod(0o711)
    spool = base / "spool"
    spool.mkdir(mode=0o711)
    spool.chmod(0o711)
    yield spool
    shutil.rmtree(base, ignore_errors=True)


def assert_still_serving(sup) -> None:
    assert sup.proc.poll() is None
    assert sup.submit(sample_tasks.add, 1, 2).result(timeout=10) == 3


# -- permissions ----------------------------------------------------------------------


def test_socket_is_0600_and_spool_0700_by_default(supervisor):
    info = os.lstat(supervisor.socket)
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o600
    assert info.st_uid == os.geteuid()
    spool = os.lstat(supervisor.spool)
    assert stat.S_ISDIR(spool.st_mode)
    assert stat.S_IMODE(spool.st_mode) == 0o700


def test_socket_mode_660_is_honoured(start_supervisor):
    sup = start_supervisor("--workers", "1", "--socket-mode", "660")
    assert stat.S_IMODE(os.lstat(sup.socket).st_mode) == 0o660
    assert_still_serving(sup)


@needs_root
def test_other_uid_cannot_connect_to_a_0600_socket(start_supervisor, public_spool):
    sup = start_supervisor("--workers", "1", spool=public_spool)
    assert stat.S_IMODE(os.lstat(sup.socket).st_mode) == 0o600
    outcome = run_as(NOBODY, NOBODY, [], stats_pid(sup.socket))
    assert outcome["ok"] is False, outcome
    assert outcome["type"] == "SupervisorUnavailable", outcome
    assert "Permission denied" in outcome["message"] and sup.socket in outcome["message"], outcome
    outcome = run_as(NOBODY, NOBODY, [], raw_connect(sup.socket))
    assert outcome["type"] == "PermissionError", outcome
    assert_still_serving(sup)


@needs_root
def test_peer_credentials_refuse_another_uid_that_can_open_the_socket(start_supervisor, public_spool):
    group = socket_group()
    sup = start_supervisor("--workers", "1", "--socket-mode", "660", "--socket-group", group.gr_name, spool=public_spool)
    info = os.lstat(sup.socket)
    assert stat.S_IMODE(info.st_mode) == 0o660 and info.st_gid == group.gr_gid
    assert group.gr_gid != NOBODY
    # the file permissions let it in (a supplementary group); its primary gid and uid are not allowed
    outcome = run_as(NOBODY, NOBODY, [group.gr_gid], raw_first_reply(sup.socket))
    assert outcome["ok"] is True, outcome
    assert len(outcome["value"]) == 1, outcome
    kind, code, message = outcome["value"][0]
    assert (kind, code) == ("Error", "forbidden") and str(NOBODY) in message
    outcome = run_as(NOBODY, NOBODY, [group.gr_gid], stats_pid(sup.socket))
    assert outcome["ok"] is False, outcome
    assert outcome["type"] == "RemoteError" and outcome["code"] == "forbidden", outcome
    assert f"refused a connection from uid {NOBODY}" in sup.log()
    assert_still_serving(sup)


@needs_root
def test_forbidden_reaches_a_client_that_is_slow_to_send_its_hello(start_supervisor, public_spool):
    """The supervisor refuses at accept time and closes at once; a client that sends
    its Hello only after that (it was descheduled after connect) should still report
    the Error the supervisor sent, not a broken pipe. Here the delay is made certain:
    the child waits until the supervisor has hung up before it sends Hello."""
    group = socket_group()
    sup = start_supervisor("--workers", "1", "--socket-mode", "660", "--socket-group", group.gr_name, spool=public_spool)

    class SlowSocket(socket.socket):
        def connect(self, address) -> None:
            super().connect(address)
            poller = select.poll()
            poller.register(self, select.POLLRDHUP)
            assert poller.poll(5000), "the supervisor did not hang up"

    def action() -> object:
        socket.socket = SlowSocket  # in the forked child only
        return Client(sup.socket, timeout=5.0).request(StatsRequest()).data["pid"]

    outcome = run_as(NOBODY, NOBODY, [group.gr_gid], action)
    assert outcome["ok"] is False, outcome
    assert outcome["type"] == "RemoteError" and outcome["code"] == "forbidden", outcome
    assert_still_serving(sup)


@needs_root
@pytest.mark.parametrize("how", ["allow_uid", "primary_gid"])
def test_peer_credentials_admit_an_allowed_uid_or_the_socket_group(start_supervisor, public_spool, how):
    group = socket_group()
    extra = ("--allow-uid", str(NOBODY)) if how == "allow_uid" else ()
    sup = start_supervisor("--workers", "1", "--socket-mode", "660", "--socket-group", group.gr_name, *extra,
                           spool=public_spool)
    gid = NOBODY if how == "allow_uid" else group.gr_gid
    outcome = run_as(NOBODY, gid, [group.gr_gid], stats_pid(sup.socket))
    assert outcome == {"ok": True, "value": sup.pid}


# -- what may sit at the socket path -----------------------------------------------------------


def private_spool(tmp_path: Path) -> Path:
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o700)
    return spool


@pytest.mark.parametrize("dangling", [False, True], ids=["to_a_file", "dangling"])
def test_symlink_at_socket_path_refuses_to_start(start_supervisor, tmp_path, dangling):
    spool = private_spool(tmp_path)
    target = tmp_path / "target"
    if not dangling:
        target.write_text("keep me")
        target.chmod(0o644)
    link = spool / "taskpool.sock"
    link.symlink_to(target)
    sup = start_supervisor("--workers", "1", spool=spool, wait=False)
    assert sup.wait_exit(15) == 2
    log = sup.log()
    assert "symbolic link" in log and str(link) in log, log
    assert link.is_symlink() and os.readlink(link) == str(target)
    if dangling:
        assert not os.path.lexists(target)
    else:
        assert target.read_text() == "keep me" and stat.S_IMODE(target.stat().st_mode) == 0o644


@pytest.mark.parametrize("kind", ["file", "directory", "fifo"])
def test_non_socket_at_socket_path_refuses_to_start(start_supervisor, tmp_path, kind):
    spool = private_spool(tmp_path)
    path = spool / "taskpool.sock"
    if kind == "file":
        path.write_text("precious data")
    elif kind == "directory":
        path.mkdir()
    else:
        os.mkfifo(path)
    sup = start_supervisor("--workers", "1", spool=spool, wait=False)
    assert sup.wait_exit(15) == 2
    log = sup.log()
    assert "not a socket" in log and str(path) in log, log
    if kind == "file":
        assert path.read_text() == "precious data"
    elif kind == "directory":
        assert path.is_dir()
    else:
        assert stat.S_ISFIFO(os.lstat(path).st_mode)


def test_spool_that_is_a_symlink_refuses_to_start(tmp_path):
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    spool = tmp_path / "spool"
    spool.symlink_to(real)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), str(ROOT)])}
    env.pop("DJANGO_SETTINGS_MODULE", None)  # a plain supervisor
    done = subprocess.run(  # killed and reaped by run() if it overruns
        [sys.executable, "-m", "taskpool", "--spool", str(spool), "--import", "sample_tasks", "--workers", "1"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=20,
    )
    assert done.returncode == 2, done.stderr
    assert "not a plain directory" in done.stderr and str(spool) in done.stderr
    assert list(real.iterdir()) == []


def test_stale_socket_is_replaced(start_supervisor, tmp_path):
    spool = private_spool(tmp_path)
    path = spool / "taskpool.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        stale.bind(str(path))
    finally:
        stale.close()
    path.chmod(0o640)
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    with pytest.raises(ConnectionRefusedError):  # nobody listens on it
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        finally:
            probe.close()
    sup = start_supervisor("--workers", "1", spool=spool)
    new = os.lstat(path)
    assert stat.S_ISSOCK(new.st_mode)
    assert stat.S_IMODE(new.st_mode) == 0o600  # a fresh socket, not the stale file re-used
    assert sup.stats()["pid"] == sup.pid
    assert_still_serving(sup)


def test_second_supervisor_on_the_same_spool_refuses_to_start(start_supervisor):
    first = start_supervisor("--workers", "1")
    inode = os.lstat(first.socket).st_ino
    second = start_supervisor("--workers", "1", spool=first.spool, wait=False)
    assert second.wait_exit(15) == 2
    assert "already listening" in second.log()
    assert os.lstat(first.socket).st_ino == inode  # the loser did not unlink the winner's socket
    assert first.stats()["pid"] == first.pid
    assert_still_serving(first)


# -- what may be named ------------------------------------------------------------------------

DANGEROUS_NAMES = ["os.system", "subprocess.call", "builtins.eval", "sample_tasks.os.system", "posix.system"]


@pytest.mark.parametrize("name", DANGEROUS_NAMES)
def test_only_registered_tasks_can_be_named(supervisor, tmp_path, name):
    marker = tmp_path / "pwned"
    with pytest.raises(taskpool.UnknownTask) as caught:
        supervisor.submit(name, f"touch {marker}")
    assert caught.value.code == "unknown_task" and name in caught.value.message
    assert_still_serving(supervisor)  # a task that ran after the refused one has finished
    data = supervisor.stats()
    assert data["counters"]["succeeded"] == 1
    assert data["queue"] == {"ready": 0, "delayed": 0, "running": 0}
    assert name not in data["known_tasks"]
    assert not marker.exists()

