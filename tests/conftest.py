from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers import RawConnection, RunningSupervisor  # noqa: E402


@pytest.fixture
def start_supervisor(tmp_path):
    """Factory: start_supervisor("--workers", "2", ...) -> RunningSupervisor (ready)."""
    started: list[RunningSupervisor] = []

    def start(*args: str, wait: bool = True, env: dict | None = None, spool: Path | None = None,
              imports: tuple[str, ...] = ("sample_tasks",)) -> RunningSupervisor:
        spool = spool or tmp_path / f"spool{len(started)}"
        flags = [a for m in imports for a in ("--import", m)]
        sup = RunningSupervisor(spool, [*flags, *args], env=env)
        started.append(sup)
        if wait:
            sup.wait_ready()
        return sup

    yield start
    for sup in started:
        sup.cleanup()


@pytest.fixture
def supervisor(start_supervisor):
    """A ready supervisor with 2 workers running tests/sample_tasks.py."""
    return start_supervisor("--workers", "2")


@pytest.fixture(autouse=True)
def plain_client_settings(request):
    """pytest-django sets Django up for the whole session, and the taskpool app points the
    client at the django store; tests of the core start from plain settings instead."""
    import taskpool

    if "django" not in request.node.path.parts:
        taskpool.configure(spool="", socket="", store="", immediate=False)
    yield


@pytest.fixture
def raw() -> Iterator[Callable[..., RawConnection]]:
    """Factory: raw(path) -> RawConnection (a client speaking the wire format by hand); every
    one is closed at teardown."""
    opened: list[RawConnection] = []

    def connect(path: str, timeout: float = 10.0) -> RawConnection:
        conn = RawConnection(path, timeout)
        opened.append(conn)
        return conn

    yield connect
    for conn in opened:
        conn.close()
