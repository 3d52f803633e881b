"""The command line: ``python -m taskpool`` to run a supervisor and ``status`` to read one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from helpers import ROOT, TESTS_DIR, wait_until

from taskpool.client import Client
from taskpool.protocol import StatsRequest


def cli_env(extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKPOOL_") and k != "DJANGO_SETTINGS_MODULE"}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR), str(ROOT)])
    env.update(extra or {})
    return env


def run_cli(*args: str, env: dict | None = None, cwd: Path | None = None, timeout: float = 30.0) -> subprocess.CompletedProcess:
    """Run ``python -m taskpool ARGS`` to completion (killed and reaped if it overruns)."""
    return subprocess.run(
        [sys.executable, "-m", "taskpool", *args],
        capture_output=True, text=True, env=cli_env(env), cwd=cwd, timeout=timeout,
    )


# -- status ------------------------------------------------------------------------------


def test_status_prints_a_table(supervisor):
    worker_pids = [w["pid"] for w in supervisor.wait_ready()["workers"]]
    done = run_cli("status", "--spool", str(supervisor.spool))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert f"supervisor pid {supervisor.pid}" in lines[0]
    header = [line for line in lines if line.split()[:4] == ["WID", "PID", "GEN", "STATE"]]
    assert len(header) == 1, done.stdout
    rows = lines[lines.index(header[0]) + 1:]
    assert len(rows) == 2, done.stdout
    assert sorted(int(row.split()[1]) for row in rows) == sorted(worker_pids)
    assert all(row.split()[3] in ("idle", "busy") for row in rows)
    assert supervisor.socket in done.stdout


def test_status_json_has_the_documented_keys(supervisor):
    supervisor.wait_ready()
    done = run_cli("status", "--spool", str(supervisor.spool), "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert {"pid", "uptime", "generation", "workers", "queue", "counters"} <= set(data)
    assert data["pid"] == supervisor.pid
    assert data["generation"] == 1
    assert isinstance(data["uptime"], (int, float)) and data["uptime"] >= 0
    assert len(data["workers"]) == 2
    for worker in data["workers"]:
        assert {"pid", "state", "task_id", "tasks_done", "rss", "cpu_percent"} <= set(worker)
        assert psutil.Process(worker["pid"]).ppid() == supervisor.pid
        assert worker["state"] in ("idle", "busy")
    assert {"ready", "delayed", "running"} <= set(data["queue"])
    assert all(isinstance(v, int) for v in data["queue"].values())
    assert isinstance(data["counters"], dict) and "submitted" in data["counters"]


@pytest.mark.parametrize("spool_exists", [True, False], ids=["empty_spool", "missing_spool"])
def test_status_without_a_supervisor_exits_1_naming_the_socket(tmp_path, spool_exists):
    spool = tmp_path / "spool"
    if spool_exists:
        spool.mkdir()
    done = run_cli("status", "--spool", str(spool))
    assert done.returncode == 1
    assert str(spool / "taskpool.sock") in done.stderr
    assert done.stdout == ""
    assert "Traceback" not in done.stderr


# -- configuration errors ------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, setting",
    [
        (("--workers", "0"), "workers"),
        (("--socket-mode", "777"), "socket_mode"),
        (("--socket-mode", "644"), "socket_mode"),
        (("--workers", "many"), "workers"),
    ],
    ids=["workers_0", "socket_mode_777", "socket_mode_644", "workers_not_a_number"],
)
def test_invalid_setting_exits_2_naming_it(tmp_path, args, setting):
    spool = tmp_path / "spool"
    done = run_cli("--spool", str(spool), "--import", "sample_tasks", *args, timeout=20)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert setting in done.stderr or setting.replace("_", "-") in done.stderr, done.stderr
    assert args[1] in done.stderr
    assert "Traceback" not in done.stderr
    assert not (spool / "taskpool.sock").exists()


# -- running -------------------------------------------------------------------------------


def test_pidfile_is_written_and_removed_after_sigterm(start_supervisor, tmp_path):
    pidfile = tmp_path / "taskpool.pid"
    sup = start_supervisor("--workers", "1", "--pidfile", str(pidfile))
    assert pidfile.read_text() == f"{sup.pid}\n"
    sup.signal(signal.SIGTERM)
    assert sup.wait_exit(15) == 0
    assert not pidfile.exists()


def test_unwritable_pidfile_exits_2_and_leaves_no_socket(tmp_path):
    """Beyond the brief: a pidfile that cannot be written is a configuration error
    (exit 2, named), and the socket bound just before must not be left behind."""
    spool = tmp_path / "spool"
    pidfile = tmp_path / "no-such-dir" / "taskpool.pid"
    done = run_cli("--spool", str(spool), "--import", "sample_tasks", "--workers", "1", "--pidfile", str(pidfile),
                   cwd=tmp_path, timeout=20)
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert str(pidfile) in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert not (spool / "taskpool.sock").exists()


def test_worker_process_titles(supervisor):
    pids = [w["pid"] for w in supervisor.wait_ready()["workers"]]

    def titles() -> list[str] | None:
        found = [" ".join(psutil.Process(pid).cmdline()) for pid in pids]
        return found if all("idle" in t for t in found) else None

    for title in wait_until(titles, message="idle worker titles"):
        assert "taskpool: worker" in title and "gen 1" in title, title
    assert "taskpool: supervisor gen 1" in " ".join(psutil.Process(supervisor.pid).cmdline())


def test_task_module_that_fails_to_import_exits_3(start_supervisor):
    started = time.monotonic()
    sup = start_supervisor("--workers", "2", "--import", "no_such_module_xyz", wait=False)
    assert sup.wait_exit(10) == 3
    assert time.monotonic() - started < 10
    log = sup.log()
    assert "no_such_module_xyz" in log, log
    assert not os.path.exists(sup.socket)


# -- TASKPOOL_SPOOL ---------------------------------------------------------------------------


def test_taskpool_spool_env_is_honoured_by_status(supervisor, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = run_cli("status", "--json", env={"TASKPOOL_SPOOL": str(supervisor.spool)}, cwd=elsewhere)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["pid"] == supervisor.pid


def test_taskpool_spool_env_is_honoured_by_the_supervisor(tmp_path):
    spool, cwd = tmp_path / "env-spool", tmp_path / "cwd"
    cwd.mkdir()
    env = {"TASKPOOL_SPOOL": str(spool)}
    log_path = tmp_path / "supervisor.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "taskpool", "--import", "sample_tasks", "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, env=cli_env(env), cwd=cwd, start_new_session=True,
        )
    try:
        client = Client(str(spool / "taskpool.sock"), timeout=5.0)

        def answers() -> dict | None:
            if proc.poll() is not None:
                raise AssertionError(f"supervisor exited with {proc.returncode}:\n{log_path.read_text()}")
            return client.request(StatsRequest()).data

        data = wait_until(answers, 15, "the supervisor on $TASKPOOL_SPOOL")
        assert data["pid"] == proc.pid
        assert data["socket"] == str(spool / "taskpool.sock")
        assert not (cwd / "spool").exists()  # not the default ./spool
        done = run_cli("status", env=env, cwd=cwd)
        assert done.returncode == 0, done.stderr
        assert f"supervisor pid {proc.pid}" in done.stdout
        client._forget()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
