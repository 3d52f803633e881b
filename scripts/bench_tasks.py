"""Tasks for scripts/bench. Plain functions (so the baselines can pickle them) registered
as taskpool tasks under names of their own."""

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


noop = taskpool.task(noop_fn, name="bench_tasks.noop")
burn = taskpool.task(burn_fn, name="bench_tasks.burn")
