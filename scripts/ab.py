"""A/B of two taskpool checkouts on W1 or W2 (see bench.py), alternating, for a change too small
to see through a whole ``scripts/bench`` run's noise.

    python scripts/ab.py OLD_CHECKOUT NEW_CHECKOUT [--workload w1|w2] [--store memory|sqlite]
                         [--starts 3]

Each start runs one checkout's supervisor (2 workers) and, in a child process importing the same
checkout, its producer: W1 is three runs of 20,000 no-ops by ``submit_many`` of 500 then
``taskpool.wait``; W2 is 2,000 ``submit().result()`` round trips. Starts alternate between the
two checkouts; the medians over all runs are printed, with the ratio NEW / OLD. Run it with the
interpreter of a venv that has taskpool's dependencies (``.venv/bin/python``); the checkouts'
own ``taskpool`` packages are imported through ``PYTHONPATH``, so a checkout needs no install.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
W1_TASKS, W1_BATCH, W1_RUNS = 20_000, 500, 3
W2_TRIPS = 2_000


def child(store: str, workload: str) -> list[float]:
    """In a process whose ``PYTHONPATH`` starts with one checkout: a supervisor and the runs."""
    import bench_tasks

    import taskpool

    checkout = Path(os.environ["TASKPOOL_AB_CHECKOUT"])
    if not Path(taskpool.__file__).resolve().is_relative_to(checkout):  # an install shadowing PYTHONPATH
        raise SystemExit(f"imported taskpool from {taskpool.__file__}, not from {checkout}")
    spool = Path(tempfile.mkdtemp(prefix="taskpool-ab-")) / "spool"
    proc = subprocess.Popen(
        [sys.executable, "-m", "taskpool", "--spool", str(spool), "--workers", "2", "--import", "bench_tasks",
         "--store", store, "--log-level", "WARNING", "--max-ready", "100000", "--result-cache", "100000"],
        start_new_session=True, cwd=spool.parent,
    )
    try:
        taskpool.configure(spool=str(spool), socket="", store=store)
        deadline = time.monotonic() + 60
        while True:
            try:
                taskpool.submit(bench_tasks.noop, 0).result(timeout=5)
                break
            except Exception:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.05)
        if workload == "w1":
            rates = []
            for _ in range(W1_RUNS):
                start, handles = time.perf_counter(), []
                for base in range(0, W1_TASKS, W1_BATCH):
                    handles += taskpool.submit_many([(bench_tasks.noop, (i,)) for i in range(base, base + W1_BATCH)])
                taskpool.wait(handles, timeout=120)
                rates.append(W1_TASKS / (time.perf_counter() - start))
            return rates
        trips = []
        for i in range(W2_TRIPS):
            start = time.perf_counter()
            taskpool.submit(bench_tasks.noop, i).result(timeout=10)
            trips.append((time.perf_counter() - start) * 1e6)
        return [statistics.median(trips)]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        shutil.rmtree(spool.parent, ignore_errors=True)


def one_start(checkout: Path, store: str, workload: str) -> list[float]:
    package = checkout / "taskpool"
    if not (package / "__init__.py").is_file():
        raise SystemExit(f"{checkout} is not a taskpool checkout (no taskpool/__init__.py)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(checkout), str(HERE)]), "TASKPOOL_AB_CHECKOUT": str(checkout)}
    out = subprocess.run(
        [sys.executable, __file__, "--child", "--store", store, "--workload", workload],
        env=env, check=True, capture_output=True, text=True, cwd=tempfile.gettempdir(),
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old", nargs="?", type=Path)
    parser.add_argument("new", nargs="?", type=Path)
    parser.add_argument("--workload", choices=("w1", "w2"), default="w1")
    parser.add_argument("--store", choices=("memory", "sqlite"), default="memory")
    parser.add_argument("--starts", type=int, default=3, help="supervisor starts of each checkout (default 3)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.child:
        print(json.dumps(child(opts.store, opts.workload)))
        return 0
    if opts.old is None or opts.new is None:
        parser.error("give two checkouts: OLD NEW")
    results: dict[str, list[float]] = {"old": [], "new": []}
    for start in range(opts.starts):
        for label, checkout in (("old", opts.old), ("new", opts.new)):
            figures = one_start(checkout.resolve(), opts.store, opts.workload)
            results[label] += figures
            print(f"start {start + 1}/{opts.starts} {label}: {', '.join(f'{f:,.0f}' for f in figures)}", flush=True)
    unit = "tasks/s" if opts.workload == "w1" else "us p50"
    old, new = statistics.median(results["old"]), statistics.median(results["new"])
    print(f"{opts.workload} {opts.store}: old {old:,.0f} {unit}, new {new:,.0f} {unit}, new/old {new / old:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
