"""What the supervisor has imported when it forks, and the lazy parts of the API.

Workers and the recorder are forked from the supervisor, so every module it has loaded
by then is counted again in each child's RSS (issue 5: the idle RSS target). These tests
fail if a heavy module creeps back in before the first fork.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import taskpool
from taskpool import cli
from taskpool.health import ProcessSampler

# Each is needed in one process or on a rare path only, and imported there:
NOT_BEFORE_FORK = (
    "dataclasses",  # taskpool.records instead: dataclasses imports inspect
    "inspect",  # with ast and dis: ~1.2 MiB of RSS in every process
    "typing",  # annotations only, imported under TYPE_CHECKING: ~0.5 MiB
    "uuid",  # the supervisor's id is os.urandom(16).hex()
    "asyncio",  # worker: only for a task that returns a coroutine
    "ssl",  # came with asyncio
    "subprocess",  # came with asyncio
    "concurrent.futures",  # came with asyncio
    "psutil",  # health reads /proc on Linux; psutil only where there is none
    "sqlite3",  # recorder, after its fork
    "json",  # the sqlite store (recorder) and `status --json`
    "shutil",  # argparse's help formatter (zlib, bz2, lzma with it): cli measures the width itself
    "random",  # registry.backoff_delay, on a retry
    "taskpool.client",  # the client half of the package (taskpool/__init__.py loads it on first use)
    "taskpool.connection",
    "taskpool.stores.sqlite",
    "taskpool.immediate",
)

# Runs the real CLI; at the first fork (the recorder's or a worker's) prints sys.modules and
# exits at once, so no child is ever started.
AT_FIRST_FORK = """
import os, sys

def dump():
    sys.stdout.write("\\n".join(sorted(sys.modules)) + "\\n")
    sys.stdout.flush()
    os._exit(0)

os.register_at_fork(before=dump)
from taskpool.cli import main
raise SystemExit(main(sys.argv[1:]))
"""


def modules_at_first_fork(tmp_path: Path, store: str) -> set[str]:
    """sys.modules of a real supervisor (no Django) at its first fork."""
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    proc = subprocess.run(
        [sys.executable, "-c", AT_FIRST_FORK, "--spool", str(tmp_path / "spool"), "--workers", "2",
         "--store", store, "--log-level", "WARNING"],
        capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    modules = set(proc.stdout.split())
    assert "taskpool.supervisor" in modules, proc.stdout  # it did get as far as a fork
    return modules


@pytest.mark.parametrize("store", ["sqlite", "memory"])
def test_the_supervisor_forks_without_heavy_modules(tmp_path: Path, store: str) -> None:
    modules = modules_at_first_fork(tmp_path, store)
    assert sorted(m for m in NOT_BEFORE_FORK if m in modules) == []


def test_importing_the_supervisor_and_cli_loads_no_heavy_module() -> None:
    """The same, for the imports alone (what any module-level import would add)."""
    code = "import sys, taskpool.supervisor, taskpool.cli; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    assert sorted(m for m in NOT_BEFORE_FORK if m in out.split()) == []


def test_client_names_load_on_first_use() -> None:
    """``taskpool.submit`` and ``from taskpool import submit`` work as before."""
    from taskpool import TaskHandle, submit
    from taskpool import client as client_module

    assert submit is client_module.submit and taskpool.submit is client_module.submit
    assert TaskHandle is client_module.TaskHandle
    for name in taskpool.__all__:
        assert getattr(taskpool, name) is not None, name
        assert name in dir(taskpool), name
    with pytest.raises(AttributeError, match="no_such_name"):
        taskpool.no_such_name  # noqa: B018


def test_help_is_formatted_as_argparse_would(monkeypatch: pytest.MonkeyPatch) -> None:
    """The width cli measures without shutil is the one argparse's default picks."""
    for columns in ("100", "50", "bad", None):
        if columns is None:
            monkeypatch.delenv("COLUMNS", raising=False)
        else:
            monkeypatch.setenv("COLUMNS", columns)
        ours = cli.run_parser()
        plain = argparse.ArgumentParser(prog=ours.prog, description=ours.description)
        plain.add_argument("--version", action="version", version="x")
        cli.add_arguments(plain)
        assert ours.format_help() == plain.format_help(), columns


def test_sampler_reads_rss_and_cpu_of_live_processes() -> None:
    """The /proc reading gives what psutil gives (RSS), a CPU figure, and zeros for the dead."""
    psutil = pytest.importorskip("psutil")
    sampler = ProcessSampler()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        me = os.getpid()
        first = sampler.sample([me, child.pid])
        assert first[me][1] == 0.0  # no previous sample to compare with
        deadline = time.process_time() + 0.3
        while time.process_time() < deadline:
            pass
        sampler._sampled_at = 0.0  # past the once-a-second limit
        second = sampler.sample([me, child.pid])
        assert abs(second[me][0] - psutil.Process(me).memory_info().rss) < 4 * 2**20
        assert second[child.pid][0] > 2**20
        assert second[me][1] > 0.0
    finally:
        child.kill()
        child.wait()
    sampler._sampled_at = 0.0
    assert sampler.sample([child.pid]) == {child.pid: (0, 0.0)}
