"""Tasks for scripts/chaos: each run appends its token and start time to a log."""

import os
import random
import time

import taskpool


@taskpool.task(max_attempts=20)
def work(token: int, log_path: str, fail: bool) -> int:
    started = time.time()
    time.sleep(random.uniform(0.0, 0.02))
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{token} {started:.6f}\n".encode())  # one small O_APPEND write: atomic
    finally:
        os.close(fd)
    if fail:
        raise ValueError(f"token {token} fails on purpose")
    return token
