"""Tasks the integration tests submit. Imported by the supervisor's workers."""

import ctypes
import os
import time

import taskpool

VERSION = 1


@taskpool.task(timeout=30)
def add(a, b):
    return a + b


@taskpool.task
def echo(value):
    return value


@taskpool.task(name="custom.name")
def named():
    return "named"


@taskpool.task
def version():
    return VERSION


@taskpool.task
def pid():
    return os.getpid()


@taskpool.task
def sleep(seconds, result=None):
    time.sleep(seconds)
    return result


@taskpool.task
def wait_for_file(path, timeout=30):
    """Blocks until ``path`` exists: lets a test hold a worker busy for as long as it wants."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(path)
        time.sleep(0.01)
    return "released"


@taskpool.task
def record(path, label, crash_marker=None):
    """Append ``label`` to a file, so tests can see the order tasks ran in. With
    ``crash_marker``, the first call (the marker file does not exist yet) creates it and
    then kills its worker."""
    with open(path, "a") as fh:
        fh.write(label + "\n")
    if crash_marker is not None and not os.path.exists(crash_marker):
        open(crash_marker, "w").close()
        os._exit(17)
    return label


@taskpool.task
def steps(n, delay):
    for i in range(n):
        taskpool.progress(100 * i / n, f"step {i + 1} of {n}")
        time.sleep(delay)
    return n


@taskpool.task
def fail(message):
    raise ValueError(message)


@taskpool.task(max_attempts=2)
def exit_hard(code):
    os._exit(code)


@taskpool.task
def segfault():
    ctypes.string_at(0)


@taskpool.task
def crash_once(marker):
    """Kills its own worker on the first attempt, succeeds on the next."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(9)
    return "survived"


@taskpool.task
def unserializable_result():
    return object()


@taskpool.task
def huge_result(size):
    return "x" * size


@taskpool.task
def allocate(megabytes):
    global _hoard
    _hoard = bytearray(megabytes * 1024 * 1024)
    return len(_hoard)


@taskpool.task
async def coroutine(value):
    return value * 2


_hoard = None


@taskpool.task
def sleep_then_touch(seconds, path):
    time.sleep(seconds)
    open(path, "w").close()
    return path
