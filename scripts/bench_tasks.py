"""Tasks for scripts/bench. Plain functions (so the baselines can pickle them) registered
as taskpool tasks under names of their own."""

import os
import time

import taskpool


def noop_fn(x):
    return x


def burn_fn(ms):
    """About ``ms`` milliseconds of pure-Python CPU; returns the CPU time it used."""
    start = time.process_time()
    deadline = start + ms / 1000
    n = 0
    while time.process_time() < deadline:
        n += 1
    return time.process_time() - start


def gate_fn(path, limit=600.0):
    """Hold a worker until ``path`` exists (or ``limit`` seconds pass): with every worker
    held, tasks submitted meanwhile stay READY, which is how the bench builds a backlog."""
    deadline = time.monotonic() + limit
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.005)


noop = taskpool.task(noop_fn, name="bench_tasks.noop")
burn = taskpool.task(burn_fn, name="bench_tasks.burn")
gate = taskpool.task(gate_fn, name="bench_tasks.gate")
