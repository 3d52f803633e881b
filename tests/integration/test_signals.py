"""Every supervisor signal, sent for real to a running supervisor."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import pytest
import sample_tasks
from helpers import pid_gone, wait_until

import taskpool

RELOADABLE = """
import time, taskpool
VERSION = {version!r}

@taskpool.task
def version(delay=0.0):
    time.sleep(delay)
    return VERSION
"""


def write_module(directory: Path, version: str, extra: str = "") -> None:
    (directory / "reloadable.py").write_text(RELOADABLE.format(version=version) + extra)


def test_hup_under_load_runs_new_code_and_loses_nothing(start_supervisor, tmp_path):
    write_module(tmp_path, "one")
    sup = start_supervisor("--workers", "2", imports=("reloadable",), env={"PYTHONPATH": str(tmp_path)})
    old_pids = set(sup.worker_pids())
    handles: list[taskpool.TaskHandle] = []
    stop = threading.Event()

    def producer() -> None:
        while not stop.is_set() and len(handles) < 2000:
            handles.append(sup.submit("reloadable.version", 0.005))

    thread = threading.Thread(target=producer)
    thread.start()
    try:
        wait_until(lambda: len(handles) > 50, message="load to build up")
        write_module(tmp_path, "two (reloaded)")
        sup.signal(signal.SIGHUP)
        wait_until(lambda: sup.stats()["generation"] == 2, message="generation 2")
        wait_until(lambda: all(pid_gone(p) for p in old_pids), message="old generation gone")
        wait_until(lambda: len(handles) > 100 + len(handles) // 2, timeout=5, message="more load after reload")
    finally:
        stop.set()
        thread.join()
    results = [h.result(timeout=30) for h in handles]
    assert set(results) <= {"one", "two (reloaded)"}
    assert results[0] == "one" and results[-1] == "two (reloaded)"
    counters = sup.stats()["counters"]
    assert counters["failed"] == 0 and counters["retried"] == 0
    assert counters["succeeded"] == len(handles)
    assert all(w["generation"] == 2 for w in sup.stats()["workers"])


def test_hup_lets_a_busy_old_worker_finish_its_task(start_supervisor, tmp_path):
    sup = start_supervisor("--workers", "1")
    gate = tmp_path / "gate"
    handle = sup.submit(sample_tasks.wait_for_file, str(gate))
    wait_until(lambda: handle.status == "RUNNING")
    old = sup.worker_pids()[0]
    sup.signal(signal.SIGHUP)
    wait_until(lambda: any(w["generation"] == 2 and w["state"] == "idle" for w in sup.stats()["workers"]))
    assert not pid_gone(old)  # still busy with the old task
    assert sup.submit(sample_tasks.add, 1, 2).result(timeout=10) == 3  # served by generation 2
    gate.touch()
    assert handle.result(timeout=10) == "released"
    wait_until(lambda: pid_gone(old), message="old worker to exit after its task")
    assert handle.refresh().attempts == 1


def test_hup_with_broken_code_keeps_the_old_generation(start_supervisor, tmp_path):
    write_module(tmp_path, "good")
    sup = start_supervisor("--workers", "2", imports=("reloadable",), env={"PYTHONPATH": str(tmp_path)})
    old_pids = set(sup.worker_pids())
    write_module(tmp_path, "broken", extra="\ndef broken(:\n")
    sup.signal(signal.SIGHUP)
    wait_until(lambda: "reload failed" in sup.log(), message="reload failure logged")
    assert "SyntaxError" in sup.log()
    assert sup.proc.poll() is None
    assert sup.stats()["generation"] == 1
    wait_until(lambda: set(sup.worker_pids()) == old_pids, message="only the old generation left")
    assert sup.submit("reloadable.version").result(timeout=10) == "good"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_graceful_stop_waits_for_running_task(start_supervisor, tmp_path, signum):
    sup = start_supervisor("--workers", "2", "--store", "memory")
    done = tmp_path / "done"
    handle = sup.submit(sample_tasks.sleep_then_touch, 1.0, str(done))
    wait_until(lambda: handle.status == "RUNNING")
    workers = sup.worker_pids()
    sup.signal(signum)
    with pytest.raises(taskpool.RemoteError) as refused:  # the memory store cannot keep it for later
        wait_until(lambda: sup.submit(sample_tasks.add, 1, 1) and False, timeout=5)
    assert refused.value.code == "shutting_down"
    assert sup.wait_exit(15) == 0
    assert done.exists()
    assert all(pid_gone(p) for p in workers)
    assert not Path(sup.socket).exists()


def test_submit_during_a_durable_stop_waits_for_the_next_supervisor(start_supervisor, tmp_path):
    spool = tmp_path / "spool"
    sup = start_supervisor("--workers", "1", spool=spool)
    running = sup.submit(sample_tasks.sleep_then_touch, 1.0, str(tmp_path / "done"))
    wait_until(lambda: running.status == "RUNNING")
    sup.signal(signal.SIGTERM)
    wait_until(lambda: sup.stats()["phase"] == "stopping")
    late = sup.submit(sample_tasks.add, 20, 22)  # accepted: the row waits in the store
    assert sup.wait_exit(15) == 0
    assert running.status == "SUCCESSFUL" and late.status == "READY"
    again = start_supervisor("--workers", "1", spool=spool)
    assert again.handle(late.id).result(timeout=15) == 42


def test_graceful_timeout_stops_a_task_that_runs_too_long(start_supervisor, tmp_path):
    sup = start_supervisor("--workers", "1", "--graceful-timeout", "0.5")
    handle = sup.submit(sample_tasks.wait_for_file, str(tmp_path / "never"))
    wait_until(lambda: handle.status == "RUNNING")
    worker = sup.worker_pids()[0]
    sup.signal(signal.SIGTERM)
    assert sup.wait_exit(10) == 0
    assert pid_gone(worker)
    assert "stopping" in sup.log()


def test_second_int_stops_at_once(start_supervisor, tmp_path):
    sup = start_supervisor("--workers", "1", "--graceful-timeout", "60")
    handle = sup.submit(sample_tasks.wait_for_file, str(tmp_path / "never"))
    wait_until(lambda: handle.status == "RUNNING")
    worker = sup.worker_pids()[0]
    sup.signal(signal.SIGINT)
    wait_until(lambda: sup.stats()["phase"] == "stopping")
    sup.signal(signal.SIGINT)
    assert sup.wait_exit(10) == 0
    assert pid_gone(worker)


def test_quit_stops_immediately(start_supervisor, tmp_path):
    sup = start_supervisor("--workers", "2", "--graceful-timeout", "60")
    handle = sup.submit(sample_tasks.wait_for_file, str(tmp_path / "never"))
    wait_until(lambda: handle.status == "RUNNING")
    workers = sup.worker_pids()
    sup.signal(signal.SIGQUIT)
    assert sup.wait_exit(10) == 0
    assert all(pid_gone(p) for p in workers)


def test_ttin_and_ttou_change_the_worker_count(start_supervisor):
    sup = start_supervisor("--workers", "2")
    sup.signal(signal.SIGTTIN)
    sup.wait_ready(3)
    assert sup.stats()["target_workers"] == 3
    # one signal at a time: the kernel merges repeats of a pending signal
    for count, expected in ((1, 2), (2, 1), (3, 1)):  # never below one
        sup.signal(signal.SIGTTOU)
        wait_until(lambda count=count: sup.log().count("SIGTTOU:") == count)
        assert sup.wait_ready(expected)["target_workers"] == expected
    assert sup.submit(sample_tasks.add, 3, 4).result(timeout=10) == 7


def test_usr1_reopens_the_log_file(start_supervisor, tmp_path):
    log_path = tmp_path / "taskpool.log"
    sup = start_supervisor("--workers", "1", "--log-file", str(log_path))
    wait_until(lambda: log_path.exists() and "listening" in log_path.read_text())
    rotated = tmp_path / "taskpool.log.1"
    log_path.rename(rotated)
    sup.signal(signal.SIGUSR1)
    wait_until(lambda: log_path.exists(), message="a new log file")
    sup.signal(signal.SIGTTIN)
    wait_until(lambda: "SIGTTIN" in log_path.read_text(), message="new lines in the new file")
    assert "SIGTTIN" not in rotated.read_text()
    assert "listening" in rotated.read_text()


def test_workers_ignore_a_group_wide_sigint_while_busy(start_supervisor, tmp_path):
    """Ctrl-C reaches the whole process group; a running task must still finish."""
    import os

    sup = start_supervisor("--workers", "1")
    done = tmp_path / "done"
    handle = sup.submit(sample_tasks.sleep_then_touch, 0.8, str(done))
    wait_until(lambda: handle.status == "RUNNING")
    os.killpg(sup.pid, signal.SIGINT)
    assert sup.wait_exit(15) == 0
    assert done.exists()


def test_hup_with_broken_code_under_load_keeps_serving(start_supervisor, tmp_path):
    write_module(tmp_path, "good")
    sup = start_supervisor("--workers", "2", imports=("reloadable",), env={"PYTHONPATH": str(tmp_path)})
    handles: list[taskpool.TaskHandle] = []
    stop = threading.Event()

    def producer() -> None:
        while not stop.is_set() and len(handles) < 1500:
            handles.append(sup.submit("reloadable.version", 0.005))

    thread = threading.Thread(target=producer)
    thread.start()
    try:
        wait_until(lambda: len(handles) > 50, message="load to build up")
        write_module(tmp_path, "broken", extra="\ndef broken(:\n")
        sup.signal(signal.SIGHUP)
        wait_until(lambda: "reload failed" in sup.log(), message="reload failure logged")
        count = len(handles)
        wait_until(lambda: len(handles) > count + 50, message="load goes on after the failed reload")
    finally:
        stop.set()
        thread.join()
    assert sup.proc.poll() is None, sup.log()
    assert {h.result(timeout=30) for h in handles} == {"good"}
    assert sup.stats()["generation"] == 1
