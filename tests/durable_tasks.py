"""Tasks for the durability tests: they count their attempts and stamp times in files.

Imported by the supervisor's workers next to sample_tasks. Every attempt appends one
line (the wall-clock time) to a ``log`` file, so a test reads how many attempts ran
and when, even across supervisors.
"""

import os
import time

import taskpool


def _attempt(log):
    """Append this attempt's time to ``log``; return the attempt number (1-based)."""
    with open(log, "a") as fh:
        fh.write(f"{time.time()!r}\n")
    with open(log) as fh:
        return len(fh.read().splitlines())


@taskpool.task(retry_for=(ConnectionError,), max_attempts=5, retry_backoff=0.2)
def flaky(log, failures=2):
    attempt = _attempt(log)
    if attempt <= failures:
        raise ConnectionError(f"attempt {attempt}: connection refused")
    return attempt


@taskpool.task(retry_for=(ConnectionError,), max_attempts=5, retry_backoff=0.05)
def wrong_error(log):
    _attempt(log)
    raise ValueError("not a connection problem")


@taskpool.task
def asks_retry(log, delay):
    attempt = _attempt(log)
    if attempt == 1:
        raise taskpool.Retry(delay=delay)
    return attempt


@taskpool.task(retry_for=(ConnectionError,), max_attempts=3, retry_backoff=0.05)
def always_down(log):
    attempt = _attempt(log)
    raise ConnectionError(f"attempt {attempt}: still down")


@taskpool.task(timeout=0.3, retry_for=(taskpool.TaskTimeout,), max_attempts=2, retry_backoff=0.05)
def slow_retried(log):
    _attempt(log)
    time.sleep(30)


@taskpool.task(timeout=0.3, max_attempts=2)
def slow_not_retried(log):
    _attempt(log)
    time.sleep(30)


@taskpool.task
def stamp(log, label):
    """Append ``label time`` to ``log``: the order and the moment tasks ran."""
    with open(log, "a") as fh:
        fh.write(f"{label} {time.time()!r}\n")
    return label


@taskpool.task
def hold(gate, log, label):
    """Stamp the start, then block until ``gate`` exists."""
    _attempt(log)
    deadline = time.monotonic() + 60
    while not os.path.exists(gate):
        if time.monotonic() > deadline:
            raise TimeoutError(gate)
        time.sleep(0.01)
    return label


@taskpool.task
def touch(path):
    open(path, "w").close()
    return path


@taskpool.task
def quick(value):
    return value


@taskpool.task(max_attempts=3)
def retry_with_bad_delay(path):
    """Asks for a retry with a delay that is not a number of seconds, once."""
    import os

    if not os.path.exists(path):
        open(path, "w").close()
        raise taskpool.Retry(delay=float("nan"))
    return "second attempt"
