"""Hostile clients and a hostile environment, against real supervisors.

What test_bad_input.py, test_security.py and test_durability.py already cover is not
repeated here (malformed frames, a half frame that stalls or is closed before any row
exists, a client that never reads, 200 clients, a locked database or a full disk at
submit, the recorder killed with the database writable). This file adds:

- clients: 1,000 connections open at once; a client that goes away in the middle of a
  stored submit or right after it; 20,000 stored submits against ``--max-ready 1000``;
- the environment: a spool on a filesystem that fills up, a wall clock that jumps an
  hour either way, the supervisor out of file descriptors, the recorder killed while
  another process holds the database locked.

Each test prints one ``[hostile]`` line with what it measured (run with ``-s``), for a
table in the docs.

File descriptors: taskpool never touches RLIMIT_NOFILE (``grep -rn RLIMIT taskpool/``
finds nothing), so the supervisor runs with the limit it inherits. It holds about 10
descriptors of its own, 1 per worker and 1 for the recorder, plus 1 per connected
client: with the common soft limit of 1024, about 1,000 clients exhaust it (see the
exhaustion tests for what happens then). Raise it where the supervisor is started,
e.g. ``LimitNOFILE=`` in its systemd unit, or ``ulimit -n`` in its start script.
"""

from __future__ import annotations

import os
import resource
import selectors
import shutil
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import durable_tasks
import psutil
import pytest
import sample_tasks
from helpers import ROOT, TESTS_DIR, RawConnection, RunningSupervisor, pid_gone, wait_until

import taskpool
from taskpool.client import build_submit, row_of, submit_many
from taskpool.errors import SupervisorUnavailable
from taskpool.protocol import (
    MAGIC,
    PROTOCOL_VERSION,
    Accepted,
    Decoder,
    Hello,
    Message,
    Query,
    TaskInfo,
    Welcome,
    encode,
)

IMPORTS = ("sample_tasks", "durable_tasks")
DB_NAME = "taskpool.sqlite3"
MIB = 1024 * 1024


# -- helpers ---------------------------------------------------------------------------


def report(text: str) -> None:
    """One measured figure for the docs table (visible with ``pytest -s``)."""
    print(f"\n[hostile] {text}")


def holds_for(condition: Callable[[], Any], duration: float) -> bool:
    """True if ``condition`` stays truthy for ``duration`` seconds (checked every 50 ms);
    False as soon as it is not, or raises SupervisorUnavailable."""
    deadline = time.monotonic() + duration
    while True:
        try:
            if not condition():
                return False
        except (SupervisorUnavailable, psutil.NoSuchProcess):
            return False
        if time.monotonic() >= deadline:
            return True
        time.sleep(0.05)


def greet_all(conns: list[RawConnection], quiet: float, timeout: float = 10.0) -> list[RawConnection]:
    """Send Hello on every connection; return those answered with Welcome before none
    has been answered for ``quiet`` seconds (or ``timeout`` has passed)."""
    for conn in conns:
        conn.send(Hello(MAGIC, PROTOCOL_VERSION))
    return collect_welcomes(conns, quiet, timeout)


def collect_welcomes(conns: list[RawConnection], quiet: float, timeout: float) -> list[RawConnection]:
    """The connections (of those Hello was sent on) whose Welcome arrives in time."""
    selector = selectors.DefaultSelector()
    for conn in conns:
        selector.register(conn.sock, selectors.EVENT_READ, conn)
    answered: list[RawConnection] = []
    deadline = time.monotonic() + timeout
    try:
        while len(answered) < len(conns) and time.monotonic() < deadline:
            events = selector.select(min(quiet, max(0.0, deadline - time.monotonic())))
            if not events:
                break
            for key, _ in events:
                conn = key.data
                data = conn.sock.recv(65536)
                assert data, "the supervisor closed a waiting connection"
                conn.inbox.extend(conn.decoder.feed(data))
                if conn.inbox:
                    assert isinstance(conn.inbox.pop(0), Welcome)
                    selector.unregister(conn.sock)
                    answered.append(conn)
    finally:
        selector.close()
    return answered


def alive(sup: RunningSupervisor) -> bool:
    return sup.proc.poll() is None and not pid_gone(sup.pid)


def assert_serving(sup: RunningSupervisor) -> None:
    assert alive(sup), f"supervisor exited with {sup.proc.returncode}:\n{tail(sup)}"
    assert sup.submit(sample_tasks.add, 40, 2).result(timeout=15) == 42


def log_count(sup: RunningSupervisor, text: str) -> int:
    """Occurrences of ``text`` in the supervisor's log (read as bytes: it may be large)."""
    sup.log_file.flush()
    return sup.log_path.read_bytes().count(text.encode())


def tail(sup: RunningSupervisor) -> str:
    """The end of the log, without the lines of an 'accept failed' flood."""
    sup.log_file.flush()
    lines = sup.log_path.read_bytes()[-2 * MIB:].decode(errors="replace").splitlines()
    return "\n".join(line for line in lines if "accept failed" not in line)[-6000:]


def cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


def statuses(store: Any, ids: list[str]) -> list[str | None]:
    rows = [store.fetch(i) for i in ids]
    return [None if r is None else r.status for r in rows]


def recorder_pid(sup: RunningSupervisor, not_these: list[int]) -> int | None:
    pid = sup.stats()["recorder"]["pid"]
    return pid if pid is not None and pid not in not_these else None


@pytest.fixture
def nofile() -> Iterator[Callable[[int], None]]:
    """raise_to(n): lift this process's soft RLIMIT_NOFILE to at least ``n`` (restored
    afterwards); supervisors started after that inherit it. Skips when the hard limit
    is lower, which is the one thing a test cannot change without root."""
    old = resource.getrlimit(resource.RLIMIT_NOFILE)

    def raise_to(n: int) -> None:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft >= n:
            return
        if hard != resource.RLIM_INFINITY and hard < n:
            pytest.skip(f"needs {n} file descriptors; the hard RLIMIT_NOFILE is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, hard))

    yield raise_to
    resource.setrlimit(resource.RLIMIT_NOFILE, old)


# -- 1. hostile clients ----------------------------------------------------------------------


def test_1000_concurrent_connections_each_submit_and_read_a_result(start_supervisor, nofile):
    """1,000 connections open at once, every one greeted, every one submitting a task and
    waiting for its result, all kept open to the end: the single-threaded loop serves
    them all, a newcomer is still served, and closing them gives every descriptor back."""
    count = 1000
    nofile(count + 1024)  # our 1,000 sockets, and the supervisor inherits the same limit
    sup = start_supervisor("--workers", "2")
    proc = psutil.Process(sup.pid)
    fds_before, rss_before = proc.num_fds(), proc.memory_info().rss
    limit = proc.rlimit(psutil.RLIMIT_NOFILE)[0]  # inherited: taskpool does not change it
    assert limit >= count + fds_before + 16

    started = time.monotonic()
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            socks.append(sock)
            sock.settimeout(30)
            sock.connect(sup.socket)
        connected = time.monotonic() - started
        decoders = {s.fileno(): Decoder(64 * MIB) for s in socks}
        inbox: dict[int, list[Message]] = {s.fileno(): [] for s in socks}

        def collect(wanted: int, timeout: float) -> None:
            """Read from every socket until each holds ``wanted`` messages."""
            selector = selectors.DefaultSelector()
            waiting = {s.fileno(): s for s in socks if len(inbox[s.fileno()]) < wanted}
            for sock in waiting.values():
                selector.register(sock, selectors.EVENT_READ)
            deadline = time.monotonic() + timeout
            try:
                while waiting:
                    left = deadline - time.monotonic()
                    assert left > 0, f"{len(waiting)} of {count} connections still wait for a reply"
                    for key, _ in selector.select(min(left, 1.0)):
                        data = key.fileobj.recv(65536)
                        assert data, "the supervisor closed a connection"
                        fd = key.fileobj.fileno()
                        inbox[fd].extend(decoders[fd].feed(data))
                        if len(inbox[fd]) >= wanted:
                            selector.unregister(key.fileobj)
                            del waiting[fd]
            finally:
                selector.close()

        for sock in socks:
            sock.sendall(encode(Hello(MAGIC, PROTOCOL_VERSION)))
        collect(1, 30)
        greeted = time.monotonic() - started
        assert all(isinstance(inbox[s.fileno()][0], Welcome) for s in socks)
        fds_peak = proc.num_fds()
        assert fds_peak >= fds_before + count  # every connection is really open at once

        submits = [build_submit(sample_tasks.add, (i, 1000), {}) for i in range(count)]
        for sock, msg in zip(socks, submits, strict=True):
            sock.sendall(encode(msg) + encode(Query(msg.task_id, 60.0)))
        collect(3, 60)
        served = time.monotonic() - started

        for sock, msg, i in zip(socks, submits, range(count), strict=True):
            _, accepted, info = inbox[sock.fileno()]
            assert isinstance(accepted, Accepted) and accepted.task_id == msg.task_id, accepted
            assert isinstance(info, TaskInfo) and info.status == "SUCCESSFUL", info
            assert info.result == i + 1000
        # a newcomer while all 1,000 are still open
        assert_serving(sup)
        rss_peak = proc.memory_info().rss
    finally:
        for sock in socks:
            sock.close()
    wait_until(lambda: proc.num_fds() <= fds_before + 1, timeout=10, message="the 1,000 descriptors given back")
    counters = sup.stats()["counters"]
    # the newcomer's stored row may be adopted by a sweep a moment before its Submit arrives
    assert counters["submitted"] + counters["adopted"] == count + 1 and counters["succeeded"] == count + 1
    wait_until(lambda: sup.store.counts() == {"SUCCESSFUL": count + 1}, timeout=15, message="every row SUCCESSFUL")
    report(f"1,000 connections (supervisor RLIMIT_NOFILE {limit}): all connected {connected * 1000:.0f} ms, "
           f"greeted {greeted * 1000:.0f} ms, 1,000 results {served * 1000:.0f} ms after the first connect; "
           f"supervisor fds {fds_before} -> {fds_peak} -> {proc.num_fds()}, "
           f"RSS {rss_before / MIB:.1f} -> {rss_peak / MIB:.1f} MiB")
    assert alive(sup)


def test_clients_that_vanish_mid_submit_lose_no_task(start_supervisor, raw, tmp_path):
    """Three ways to leave during a submit, 30 clients each: half a stored Submit then
    close (the row was committed, the frame never arrives: a sweep must adopt it); a
    whole stored Submit then close before Accepted; a whole unstored Submit then close.
    Every task runs exactly once, and the supervisor does not notice anything wrong."""
    per_kind = 30
    sup = start_supervisor("--workers", "2")
    ran = tmp_path / "ran"
    labels: dict[str, list[str]] = {"half_stored": [], "whole_stored": [], "whole_unstored": []}
    ids: list[str] = []
    started = time.monotonic()
    for i in range(per_kind):
        for kind, stored in (("half_stored", True), ("whole_stored", True), ("whole_unstored", False)):
            label = f"{kind}-{i}"
            msg = build_submit(sample_tasks.record, (str(ran), label), {}, stored=stored)
            if stored:
                sup.store.insert([row_of(msg)])  # what submit() does before it sends the frame
            conn = raw(sup.socket)
            conn.hello()
            frame = encode(msg)
            conn.sock.sendall(frame[: len(frame) // 2] if kind == "half_stored" else frame)
            conn.close()  # never reads Accepted
            labels[kind].append(label)
            ids.append(msg.task_id)

    def all_final() -> bool:
        return all(s == "SUCCESSFUL" for s in statuses(sup.store, ids))

    wait_until(all_final, timeout=20, message=f"{len(ids)} rows SUCCESSFUL")
    elapsed = time.monotonic() - started
    lines = ran.read_text().splitlines()
    for kind, expected in labels.items():
        runs = [line for line in lines if line.startswith(kind + "-")]
        assert sorted(runs) == sorted(expected), f"{kind}: each task must run exactly once"
    rows = [sup.store.fetch(i) for i in ids]
    assert all(r.attempts == 1 and r.errors == [] for r in rows)
    counters = sup.stats()["counters"]
    # whole frames are accepted as they arrive; half frames can only come back through a sweep
    assert counters["adopted"] >= per_kind
    assert counters["submitted"] + counters["adopted"] == 3 * per_kind
    assert counters["succeeded"] == 3 * per_kind and counters["failed"] == 0
    assert log_count(sup, "Traceback") == 0
    assert_serving(sup)
    report(f"vanishing clients: {3 * per_kind} tasks ({per_kind} half stored Submits, {per_kind} whole stored, "
           f"{per_kind} whole unstored, each closed before Accepted) all SUCCESSFUL once, {elapsed:.2f}s after "
           f"the first; {counters['adopted']} came back through a sweep")


def test_flood_of_stored_submits_beyond_max_ready_is_bounded_and_loses_nothing(start_supervisor):
    """20,000 stored submits against --max-ready 1000: the first thousand wait in memory,
    the rest are Accepted and left on disk for sweeps (docs/architecture.md#backpressure).
    The queue in memory never passes the limit, the supervisor's RSS stays bounded, and
    every row ends SUCCESSFUL."""
    total, max_ready, batch = 20_000, 1000, 500
    sup = start_supervisor("--workers", "2", "--max-ready", str(max_ready))
    proc = psutil.Process(sup.pid)
    rss_before = proc.memory_info().rss
    peak = {"rss": rss_before, "queued": 0, "samples": 0}
    stop = threading.Event()
    failures: list[BaseException] = []

    def sample() -> None:
        next_stats = 0.0
        try:
            while not stop.is_set():
                peak["rss"] = max(peak["rss"], proc.memory_info().rss)
                if time.monotonic() >= next_stats:
                    queue = sup.stats()["queue"]
                    peak["queued"] = max(peak["queued"], queue["ready"] + queue["delayed"])
                    peak["samples"] += 1
                    next_stats = time.monotonic() + 0.05
                time.sleep(0.01)
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.monotonic()
    try:
        handles = []
        for first in range(0, total, batch):
            calls = [(sample_tasks.add, (i, 1)) for i in range(first, first + batch)]
            handles += submit_many(calls, client=sup.client, store=sup.store)
        submitted = time.monotonic() - started
        wait_until(lambda: sup.store.counts().get("SUCCESSFUL") == total, timeout=90,
                   message=f"{total} SUCCESSFUL rows")
        drained = time.monotonic() - started
    finally:
        stop.set()
        sampler.join(10)
    assert not failures, failures
    rss_after = proc.memory_info().rss
    counters = sup.stats()["counters"]
    report(f"flood: {total} stored submits, --max-ready {max_ready}: submitted in {submitted:.2f}s, all SUCCESSFUL "
           f"after {drained:.2f}s; {counters['adopted']} adopted from disk; peak ready+delayed {peak['queued']} "
           f"({peak['samples']} samples); supervisor RSS {rss_before / MIB:.1f} / {peak['rss'] / MIB:.1f} / "
           f"{rss_after / MIB:.1f} MiB (before / peak / after)")
    assert peak["samples"] > 20
    assert peak["queued"] <= max_ready
    assert sup.store.counts() == {"SUCCESSFUL": total}
    assert counters["submitted"] + counters["adopted"] == total and counters["succeeded"] == total
    assert counters["adopted"] > 0  # the backpressure path was taken: rows waited on disk
    assert [h.result(timeout=5) for h in handles[:: total // 50]] == list(range(1, total + 1, total // 50))
    # Measured here: about 11 MiB of growth, mostly the cache of the last 10,000 finished
    # tasks (--result-cache); the bound leaves room for other machines and allocators.
    assert peak["rss"] - rss_before < 40 * MIB, f"RSS grew by {(peak['rss'] - rss_before) / MIB:.1f} MiB"
    assert_serving(sup)


# -- 2. a full disk --------------------------------------------------------------------------


@pytest.fixture
def small_filesystem(tmp_path) -> Iterator[Path]:
    """A 2 MiB tmpfs (mode 0700) to use as the spool; skipped where mounting is not allowed."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount(8) here")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mount_point)],
                          capture_output=True, text=True, timeout=10)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs for the spool: {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        if subprocess.run(["umount", str(mount_point)], capture_output=True, timeout=10).returncode != 0:
            subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, timeout=10)


def fill(directory: Path) -> Path:
    """Write zeros into ``directory`` until the filesystem says ENOSPC; returns the file."""
    ballast = directory / "ballast"
    with open(ballast, "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\0" * 65536)
        except OSError as exc:
            assert exc.errno == 28, exc  # ENOSPC
    return ballast


def test_spool_on_a_full_filesystem_then_freed_loses_nothing(small_filesystem, start_supervisor, tmp_path):
    """The spool's filesystem fills up while tasks are queued and running: submit()
    raises StoreError naming the database, the recorder keeps retrying (no crash loop,
    one process, a logged error), the tasks still run and answer through the
    supervisor, and once space is freed every accepted row is written SUCCESSFUL."""
    sup = start_supervisor("--workers", "1", spool=small_filesystem, imports=IMPORTS)
    gate = tmp_path / "gate"
    held = sup.submit(durable_tasks.hold, str(gate), str(tmp_path / "held"), "held")
    queued = [sup.submit(sample_tasks.add, i, i) for i in range(20)]  # behind it: one worker
    accepted = [held, *queued]
    wait_until(lambda: sup.store.fetch(held.id).status == "RUNNING", message="the held task recorded RUNNING")
    recorder = sup.stats()["recorder"]["pid"]

    ballast = fill(small_filesystem)
    with pytest.raises(taskpool.StoreError) as caught:
        sup.submit(sample_tasks.add, 1, 1)
    message = str(caught.value)
    assert str(small_filesystem / DB_NAME) in message and "full" in message, message

    gate.touch()  # the work goes on in memory while nothing can be written
    assert held.result(timeout=10) == "held"
    assert [h.result(timeout=10) for h in queued] == [i + i for i in range(20)]
    lag = wait_until(lambda: (s := sup.stats()["recorder"])["lag"] > 1.0 and s, timeout=10, message="recorder lag")
    assert statuses(sup.store, [h.id for h in accepted]).count("SUCCESSFUL") < len(accepted)
    assert lag["pid"] == recorder and lag["restarts"] == 0  # retrying in place, not dying and respawning
    wait_until(lambda: log_count(sup, "store write failed") > 0, message="the recorder's error logged")
    assert log_count(sup, "database or disk is full") > 0
    assert alive(sup)

    ballast.unlink()
    freed = time.monotonic()
    ids = [h.id for h in accepted]
    wait_until(lambda: statuses(sup.store, ids) == ["SUCCESSFUL"] * len(ids), timeout=15,
               message="every accepted row SUCCESSFUL after space was freed")
    caught_up = time.monotonic() - freed
    assert sup.stats()["recorder"]["pid"] == recorder
    assert_serving(sup)
    errors = log_count(sup, "store write failed")
    report(f"full spool filesystem: submit() -> StoreError '{message.split(': ', 1)[-1]}'; recorder lag reached "
           f"{lag['lag']:.1f}s with {lag['pending'] + lag['in_flight']} rows unwritten, {errors} error line(s), "
           f"0 restarts; all {len(ids)} rows written {caught_up:.2f}s after space was freed")
    sup.store.close()  # the test's own connection to the database, so the tmpfs can be unmounted


# -- 3. the wall clock jumps ------------------------------------------------------------------

SITECUSTOMIZE = '''
"""Test hook: time.time() = the real time + the offset in $TASKPOOL_TEST_CLOCK_OFFSET."""
import os
import time

_real_time = time.time
_path = os.environ["TASKPOOL_TEST_CLOCK_OFFSET"]
_state = [0.0, 0.0]  # offset, monotonic time of the next read


def _shifted_time():
    now = time.monotonic()
    if now >= _state[1]:
        try:
            with open(_path) as fh:
                _state[0] = float(fh.read() or 0)
        except (OSError, ValueError):
            pass
        _state[1] = now + 0.01
    return _real_time() + _state[0]


time.time = _shifted_time
'''


def test_wall_clock_jumps_do_not_move_timeouts_held_delays_or_heartbeats(start_supervisor, tmp_path):
    """The supervisor's wall clock (time.time, patched in it and its children through a
    sitecustomize) jumps +1 h, then back -1 h; its monotonic clock does not.

    Promised: task timeouts and the delays of tasks already in memory run on the monotonic
    clock, so they fire on time after either jump; a task running across both jumps and
    several sweeps is not taken for a dead supervisor's task and runs once (liveness is
    the flock on its lock file, not the heartbeat's wall-clock age); nothing is lost.

    By design, ``delay=``/``run_after`` is a wall-clock instant stored in the row, so a row
    still waiting on disk follows the wall clock: after +1 h a row due in 10 minutes runs
    at the next sweep, and after -1 h a row that was due in 90 s waits an hour longer."""
    offset_file = tmp_path / "clock-offset"
    offset_file.write_text("0")
    hook = tmp_path / "clock-hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {
        "PYTHONPATH": os.pathsep.join([str(hook), str(TESTS_DIR), str(ROOT)]),
        "TASKPOOL_TEST_CLOCK_OFFSET": str(offset_file),
    }
    sup = start_supervisor("--workers", "3", imports=IMPORTS, env=env)
    sup_id = sup.stats()["supervisor_id"]
    gate, held_log = tmp_path / "gate", tmp_path / "held"

    def on_disk(task: Any, *args: Any) -> str:
        """A stored row the supervisor is not told about: only a sweep can find it."""
        msg = build_submit(task, args, {}, stored=True)
        sup.store.insert([row_of(msg)])
        return msg.task_id

    def timeout_fires(timeout: float, jump_to: int) -> float:
        """Start a task that sleeps past ``timeout``, jump the clock, return when it failed."""
        handle = sup.submit(sample_tasks.sleep.using(timeout=timeout), 30)
        wait_until(lambda: handle.status == "RUNNING", message="the timed task running")
        running = time.monotonic()
        offset_file.write_text(str(jump_to))
        with pytest.raises(taskpool.TaskFailed) as caught:
            handle.result(timeout=15)
        assert caught.value.exception_type == "taskpool.errors.TaskTimeout"
        assert handle.refresh().attempts == 1
        return time.monotonic() - running

    held = sup.submit(durable_tasks.hold, str(gate), str(held_log), "held")
    wait_until(lambda: held.status == "RUNNING", message="the held task running")

    # +1 hour
    early = tmp_path / "early"
    far_row = on_disk(durable_tasks.touch.using(delay=600), str(early))  # past the 60 s sweep horizon
    mem_path, mem_delay = tmp_path / "in-memory-plus", 3.0
    mem_submitted = time.monotonic()
    mem = sup.submit(durable_tasks.touch.using(delay=mem_delay), str(mem_path))
    wait_until(lambda: sup.stats()["queue"]["delayed"] == 1, message="the delayed task held in memory")
    jumped = time.monotonic()
    timeout_after_forward = timeout_fires(2.0, 3600)
    wait_until(early.exists, timeout=10, message="the far row run after the forward jump")
    far_ran = time.monotonic() - jumped
    assert mem.result(timeout=10) == str(mem_path)
    mem_ran = time.monotonic() - mem_submitted
    assert mem_ran >= mem_delay - 0.2, f"a delayed task in memory ran {mem_ran:.2f}s after submit, not {mem_delay}s"

    # -1 hour (back to the real time, the test's own clock)
    late = tmp_path / "late"
    skewed_now = time.time() + 3600  # the supervisor's clock before it jumps back
    late_row = on_disk(durable_tasks.touch.using(run_after=skewed_now + 90), str(late))
    back_path = tmp_path / "in-memory-minus"
    back_submitted = time.monotonic()
    back = sup.submit(durable_tasks.touch.using(run_after=skewed_now + mem_delay), str(back_path))
    wait_until(lambda: sup.stats()["queue"]["delayed"] == 1, message="the delayed task held in memory")
    timeout_after_backward = timeout_fires(2.0, 0)
    assert back.result(timeout=10) == str(back_path)
    back_ran = time.monotonic() - back_submitted
    swept_path = tmp_path / "swept"
    swept = on_disk(durable_tasks.touch, str(swept_path))  # due now: proves a sweep ran after the jump
    wait_until(lambda: statuses(sup.store, [swept]) == ["SUCCESSFUL"], timeout=10, message="a sweep after the jump")
    late_row_now = sup.store.fetch(late_row)
    assert late_row_now.status == "READY" and late_row_now.held_by is None and not late.exists()

    gate.touch()
    assert held.result(timeout=10) == "held"
    ids = [held.id, far_row, mem.id, back.id, swept]
    wait_until(lambda: statuses(sup.store, ids) == ["SUCCESSFUL"] * len(ids), message="rows SUCCESSFUL")
    held_row = sup.store.fetch(held.id)
    assert held_row.attempts == 1 and held_row.errors == [] and len(held_log.read_text().splitlines()) == 1
    assert held_row.held_by == sup_id
    assert log_count(sup, "are gone") == 0 and log_count(sup, "Traceback") == 0
    counters = sup.stats()["counters"]
    assert counters["timeouts"] == 2 and counters["retried"] == 0
    assert sup.handle(late_row).cancel() == "CANCELLED"  # it would run an hour from now
    report(f"wall clock +1h then -1h: timeouts of 2s fired {timeout_after_forward:.2f}s / "
           f"{timeout_after_backward:.2f}s after start; delay={mem_delay:.0f}s held in memory ran after "
           f"{mem_ran:.2f}s / {back_ran:.2f}s; a task held across both jumps ran once; a row due in 600s on disk ran "
           f"{far_ran:.2f}s after the +1h jump; a row due in 90s on disk was still waiting after the -1h jump "
           f"(due in {late_row_now.run_after - time.time():.0f}s)")
    assert 1.5 <= timeout_after_forward < 6 and 1.5 <= timeout_after_backward < 6
    assert back_ran < mem_delay + 3
    assert far_ran < 10


# -- 4. out of file descriptors -------------------------------------------------------------------

FD_LIMIT = 64


def exhaust_descriptors(sup: RunningSupervisor, raw: Callable[..., RawConnection]) -> list[RawConnection]:
    """Lower the supervisor's soft RLIMIT_NOFILE to FD_LIMIT (prlimit on the running
    process) and connect until accept() fails with EMFILE; returns the connections."""
    proc = psutil.Process(sup.pid)
    _, hard = proc.rlimit(psutil.RLIMIT_NOFILE)
    proc.rlimit(psutil.RLIMIT_NOFILE, (FD_LIMIT, hard))
    conns = [raw(sup.socket) for _ in range(FD_LIMIT + 16)]  # the kernel queues what is not accepted
    wait_until(lambda: log_count(sup, "Too many open files") > 0, message="accept() failing with EMFILE")
    assert proc.num_fds() >= FD_LIMIT - 1
    return conns


def test_out_of_descriptors_existing_and_later_clients_are_served(start_supervisor, raw):
    """With every descriptor in use, a client connected before keeps being served, the
    log says why newcomers wait, and once descriptors free up the waiting connections
    are accepted and answered."""
    sup = start_supervisor("--workers", "1")
    assert sup.stats()["pid"] == sup.pid  # sup.client is connected before the exhaustion
    conns = exhaust_descriptors(sup, raw)
    proc = psutil.Process(sup.pid)
    at_limit = proc.num_fds()
    during = time.monotonic()
    assert sup.submit(sample_tasks.add, 2, 3).result(timeout=10) == 5
    served_during = time.monotonic() - during
    assert alive(sup)
    assert "accept failed: [Errno 24] Too many open files" in tail(sup) or log_count(sup, "[Errno 24]") > 0

    accepted = greet_all(conns, quiet=0.5)  # the accepted ones answer now, the others only later
    waiting = [c for c in conns if c not in accepted]
    assert accepted and waiting, f"{len(accepted)} of {len(conns)} accepted: the limit was not what it should be"
    for conn in accepted:
        conn.close()
    freed = time.monotonic()
    late = collect_welcomes(waiting, quiet=10.0, timeout=10.0)  # their Hello, sent above, is answered now
    welcomed = time.monotonic() - freed
    assert len(late) == len(waiting), f"{len(waiting) - len(late)} queued clients never welcomed"
    assert_serving(sup)
    report(f"RLIMIT_NOFILE {FD_LIMIT}: supervisor at {at_limit} fds with {len(accepted)} clients accepted and "
           f"{len(waiting)} queued by the kernel; a connected client's task served in {served_during * 1000:.0f} ms "
           f"meanwhile; the queued clients welcomed {welcomed * 1000:.0f} ms after descriptors were freed")


def test_out_of_descriptors_the_loop_does_not_spin(start_supervisor, raw):
    """While accept() fails for want of descriptors, the supervisor should wait, not
    spin: measured as its CPU time over 1.5 s, and as the number of log lines."""
    sup = start_supervisor("--workers", "1")
    exhaust_descriptors(sup, raw)
    proc = psutil.Process(sup.pid)
    lines_before, cpu_before, wall_before = log_count(sup, "accept failed"), cpu_seconds(proc), time.monotonic()
    assert holds_for(lambda: alive(sup), 1.5), "the supervisor died"
    cpu = (cpu_seconds(proc) - cpu_before) / (time.monotonic() - wall_before)
    lines = log_count(sup, "accept failed") - lines_before
    report(f"RLIMIT_NOFILE {FD_LIMIT}, accept() failing: supervisor CPU {cpu:.0%} of a core, "
           f"{lines} 'accept failed' log lines in 1.5s")
    assert cpu < 0.25, f"the supervisor used {cpu:.0%} of a core while it could not accept"
    assert lines < 20, f"{lines} 'accept failed' lines in 1.5s"


@pytest.mark.parametrize("trigger", ["stats", "worker_dies", "recorder_dies"])
def test_out_of_descriptors_the_supervisor_survives(start_supervisor, raw, tmp_path, trigger):
    """What needs a new descriptor while none is left: the psutil sample in a stats
    reply, the socketpair of a replacement worker or recorder. The supervisor should
    stay up and recover once descriptors free up: the task of the dead worker re-run,
    the store caught up."""
    sup = start_supervisor("--workers", "1", imports=IMPORTS)
    before = sup.stats()
    old_worker, old_recorder = before["workers"][0]["pid"], before["recorder"]["pid"]
    conns = exhaust_descriptors(sup, raw)
    handle = sup.submit(sample_tasks.add, 20, 22)  # over the connection made before
    assert handle.result(timeout=10) == 42
    gate = tmp_path / "gate"
    busy = sup.submit(durable_tasks.hold, str(gate), str(tmp_path / "busy"), "busy")
    wait_until(lambda: busy.status == "RUNNING", message="the worker busy")
    if trigger == "stats":
        survived = holds_for(lambda: sup.stats()["pid"] == sup.pid, 1.5)  # past the sampler's 1 s interval
    else:
        victim = old_worker if trigger == "worker_dies" else old_recorder
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: pid_gone(victim), timeout=5, message="the victim gone")
        survived = holds_for(lambda: alive(sup), 1.5)
    if not survived:
        wait_until(lambda: sup.proc.poll() is not None, timeout=10, message="the supervisor's exit")
        last = [line for line in tail(sup).splitlines() if "Error" in line][-1:]
        report(f"RLIMIT_NOFILE {FD_LIMIT}, {trigger}: the supervisor exited with {sup.proc.returncode}: {last}")
    assert survived, f"the supervisor did not survive {trigger} while out of descriptors:\n{tail(sup)}"
    for conn in conns:
        conn.close()
    gate.touch()
    assert busy.result(timeout=15) == "busy"
    assert busy.refresh().attempts == (2 if trigger == "worker_dies" else 1)  # a lost worker's task runs again
    sup.wait_ready(workers=1)
    wait_until(lambda: statuses(sup.store, [handle.id, busy.id]) == ["SUCCESSFUL"] * 2, message="the rows written")
    after = sup.stats()
    assert_serving(sup)
    report(f"RLIMIT_NOFILE {FD_LIMIT}, {trigger}: the supervisor stayed up; worker {old_worker} -> "
           f"{after['workers'][0]['pid']}, recorder {old_recorder} -> {after['recorder']['pid']}")


# -- 5. the database locked while the recorder is killed ----------------------------------------


def test_recorder_killed_repeatedly_while_another_process_locks_the_database(start_supervisor):
    """Another process holds the database in BEGIN EXCLUSIVE; the recorder, stuck
    retrying its write, is SIGKILLed three times. Tasks keep running in memory, each
    new recorder boots (WAL lets it read) and waits for the lock, and once the lock is
    released every status reaches the store: each row SUCCESSFUL with one attempt."""
    count = 40
    sup = start_supervisor("--workers", "2")
    db = sup.spool / DB_NAME
    # one transaction, then the lock at once: 2 s of work, so most statuses come while locked
    handles = submit_many([(sample_tasks.sleep, (0.1, i)) for i in range(count)], client=sup.client, store=sup.store)
    locker = sqlite3.connect(str(db), isolation_level=None, timeout=10)
    killed: list[int] = []
    try:
        locker.execute("BEGIN EXCLUSIVE")
        locked = time.monotonic()
        for _ in range(3):
            pid = wait_until(lambda: recorder_pid(sup, killed), timeout=15, message="a new recorder")
            # it has opened the database (and is about to say it is ready): kill it there
            wait_until(lambda pid=pid: any(os.path.realpath(f.path) == os.path.realpath(db)
                                           for f in psutil.Process(pid).open_files()),
                       timeout=10, message="the new recorder opened the database")
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            wait_until(lambda pid=pid: pid_gone(pid), timeout=5, message="recorder gone")
        assert [h.result(timeout=15) for h in handles] == list(range(count))  # answered from memory
        recorder = wait_until(lambda: recorder_pid(sup, killed), timeout=15, message="a fourth recorder")
        rows = sup.store.counts()
        assert rows.get("SUCCESSFUL", 0) < count, rows  # nothing could be written while locked
        held_for = time.monotonic() - locked
        stats = sup.stats()["recorder"]
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    released = time.monotonic()
    wait_until(lambda: sup.store.counts() == {"SUCCESSFUL": count}, timeout=20, message=f"{count} SUCCESSFUL rows")
    caught_up = time.monotonic() - released
    rows = [sup.store.fetch(h.id) for h in handles]
    assert [r.result for r in rows] == list(range(count))
    assert all(r.attempts == 1 and r.errors == [] for r in rows)
    final = sup.stats()["recorder"]
    assert final["restarts"] >= 3 and final["pid"] == recorder and not pid_gone(recorder)
    assert sup.stats()["counters"]["succeeded"] == count
    assert_serving(sup)
    report(f"database locked by another process for {held_for:.1f}s, recorder SIGKILLed 3 times meanwhile: "
           f"{stats['pending'] + stats['in_flight']} status snapshots unwritten at the release, all {count} written "
           f"{caught_up:.2f}s after it; restarts {final['restarts']}")
