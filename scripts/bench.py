"""Benchmarks: taskpool (memory and sqlite stores) against multiprocessing.Pool and
ProcessPoolExecutor, measured in the same run, alternating, several repetitions, medians.

Workloads (2 workers, one producer):
  W1 throughput: N no-op tasks submitted as fast as possible, then waited for (tasks/s)
  W2 latency:    sequential round trips, submit one no-op and wait for it (p50, p99 in us)
  W3 submit:     the submit() call alone (p50, p99 in us)
  W4 efficiency: tasks of ~10 ms pure-Python CPU; their own process_time() summed over
                 (workers x wall time)
  RSS:           supervisor + workers + recorder idle (MiB)

Ratios are against multiprocessing.Pool measured in the same run (for latency and submit
cost a ratio below 1 is better). --quick finishes in well under a minute.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_tasks  # noqa: E402

from taskpool.client import Client, TaskHandle  # noqa: E402
from taskpool.protocol import StatsRequest  # noqa: E402
from taskpool.stores import open_store  # noqa: E402

WORKERS = 2


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- baselines ------------------------------------------------------------------


class PoolRunner:
    name = "multiprocessing.Pool"

    def __enter__(self) -> PoolRunner:
        self.pool = multiprocessing.get_context("fork").Pool(WORKERS)
        self.pool.apply(bench_tasks.noop_fn, (0,))
        return self

    def __exit__(self, *exc: object) -> None:
        self.pool.terminate()
        self.pool.join()

    def throughput(self, n: int) -> float:
        start = time.perf_counter()
        results = [self.pool.apply_async(bench_tasks.noop_fn, (i,)) for i in range(n)]
        for r in results:
            r.get()
        return n / (time.perf_counter() - start)

    def latency(self, n: int) -> list[float]:
        out = []
        for i in range(n):
            start = time.perf_counter()
            self.pool.apply_async(bench_tasks.noop_fn, (i,)).get()
            out.append(time.perf_counter() - start)
        return out

    def submit_cost(self, n: int) -> list[float]:
        out, pending = [], []
        for i in range(n):
            start = time.perf_counter()
            pending.append(self.pool.apply_async(bench_tasks.noop_fn, (i,)))
            out.append(time.perf_counter() - start)
        for r in pending:
            r.get()
        return out

    def efficiency(self, n: int, ms: float) -> float:
        start = time.perf_counter()
        cpu = sum(r.get() for r in [self.pool.apply_async(bench_tasks.burn_fn, (ms,)) for _ in range(n)])
        return cpu / (WORKERS * (time.perf_counter() - start))


class ExecutorRunner(PoolRunner):
    name = "ProcessPoolExecutor"

    def __enter__(self) -> ExecutorRunner:
        self.pool = concurrent.futures.ProcessPoolExecutor(WORKERS, mp_context=multiprocessing.get_context("fork"))
        self.pool.submit(bench_tasks.noop_fn, 0).result()
        return self

    def __exit__(self, *exc: object) -> None:
        self.pool.shutdown(cancel_futures=True)

    def throughput(self, n: int) -> float:
        start = time.perf_counter()
        futures = [self.pool.submit(bench_tasks.noop_fn, i) for i in range(n)]
        for f in futures:
            f.result()
        return n / (time.perf_counter() - start)

    def latency(self, n: int) -> list[float]:
        out = []
        for i in range(n):
            start = time.perf_counter()
            self.pool.submit(bench_tasks.noop_fn, i).result()
            out.append(time.perf_counter() - start)
        return out

    def submit_cost(self, n: int) -> list[float]:
        out, pending = [], []
        for i in range(n):
            start = time.perf_counter()
            pending.append(self.pool.submit(bench_tasks.noop_fn, i))
            out.append(time.perf_counter() - start)
        for f in pending:
            f.result()
        return out

    def efficiency(self, n: int, ms: float) -> float:
        start = time.perf_counter()
        cpu = sum(f.result() for f in [self.pool.submit(bench_tasks.burn_fn, ms) for _ in range(n)])
        return cpu / (WORKERS * (time.perf_counter() - start))


# -- taskpool -------------------------------------------------------------------


class TaskpoolRunner:
    def __init__(self, store: str) -> None:
        self.store_name = store
        self.name = f"taskpool ({store})"

    def __enter__(self) -> TaskpoolRunner:
        self.dir = Path(tempfile.mkdtemp(prefix="taskpool-bench-"))
        spool = self.dir / "spool"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
        env.pop("DJANGO_SETTINGS_MODULE", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "taskpool", "--spool", str(spool), "--workers", str(WORKERS),
             "--import", "bench_tasks", "--store", self.store_name, "--log-level", "WARNING",
             "--max-ready", "100000", "--result-cache", "100000"],
            env=env, start_new_session=True,
        )
        self.client = Client(str(spool / "taskpool.sock"))
        self.store = open_store(self.store_name, str(spool))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                data = self.client.request(StatsRequest()).data
                if sum(w["state"] == "idle" for w in data["workers"]) == WORKERS:
                    break
            except Exception:
                pass
            time.sleep(0.05)
        else:
            raise SystemExit("taskpool supervisor did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def _submit(self, task, *args) -> TaskHandle:
        from taskpool.client import submit_many

        return submit_many([(task, args)], client=self.client, store=self.store)[0]

    def throughput(self, n: int) -> float:
        from taskpool.client import submit_many

        start = time.perf_counter()
        handles = []
        for base in range(0, n, 500):
            calls = [(bench_tasks.noop, (i,)) for i in range(base, min(n, base + 500))]
            handles += submit_many(calls, client=self.client, store=self.store)
        for h in handles:
            h.result(timeout=600)
        return n / (time.perf_counter() - start)

    def latency(self, n: int) -> list[float]:
        out = []
        for i in range(n):
            start = time.perf_counter()
            self._submit(bench_tasks.noop, i).result(timeout=60)
            out.append(time.perf_counter() - start)
        return out

    def submit_cost(self, n: int) -> list[float]:
        out, pending = [], []
        for i in range(n):
            start = time.perf_counter()
            pending.append(self._submit(bench_tasks.noop, i))
            out.append(time.perf_counter() - start)
        for h in pending:
            h.result(timeout=600)
        return out

    def efficiency(self, n: int, ms: float) -> float:
        from taskpool.client import submit_many

        start = time.perf_counter()
        handles = submit_many([(bench_tasks.burn, (ms,)) for _ in range(n)], client=self.client, store=self.store)
        cpu = sum(h.result(timeout=600) for h in handles)
        return cpu / (WORKERS * (time.perf_counter() - start))

    def rss(self) -> float:
        procs = [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children(recursive=True)]
        return sum(p.memory_info().rss for p in procs) / 2**20


# -- the run --------------------------------------------------------------------


def measure(runner, sizes: dict) -> dict:
    with runner as r:
        figures = {
            "w1_tasks_per_s": r.throughput(sizes["w1"]),
            "w2": r.latency(sizes["w2"]),
            "w3": r.submit_cost(sizes["w3"]),
            "w4_efficiency": r.efficiency(sizes["w4"], 10.0),
        }
        if hasattr(r, "rss"):
            figures["idle_rss_mib"] = r.rss()
    figures["w2_p50_us"] = percentile(figures["w2"], 0.5) * 1e6
    figures["w2_p99_us"] = percentile(figures.pop("w2"), 0.99) * 1e6
    figures["w3_p50_us"] = percentile(figures["w3"], 0.5) * 1e6
    figures["w3_p99_us"] = percentile(figures.pop("w3"), 0.99) * 1e6
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, 1 repetition (under a minute)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    sizes = {"w1": 20_000, "w2": 1000, "w3": 1000, "w4": 200}
    repeat = args.repeat
    if args.quick:
        sizes, repeat = {"w1": 2000, "w2": 200, "w3": 200, "w4": 40}, 1
    runners = [PoolRunner, ExecutorRunner, lambda: TaskpoolRunner("memory"), lambda: TaskpoolRunner("sqlite")]
    names = ["multiprocessing.Pool", "ProcessPoolExecutor", "taskpool (memory)", "taskpool (sqlite)"]
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for rep in range(repeat):
        order = names if rep % 2 == 0 else list(reversed(names))  # alternate A/B order
        for name in order:
            runs[name].append(measure(runners[names.index(name)](), sizes))
            print(f"  run {rep + 1}/{repeat}: {name} done", file=sys.stderr)
    medians = {n: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for n, rs in runs.items()}
    base = medians["multiprocessing.Pool"]
    keys = ["w1_tasks_per_s", "w2_p50_us", "w2_p99_us", "w3_p50_us", "w3_p99_us", "w4_efficiency", "idle_rss_mib"]
    print(f"\n{'':24}" + "".join(f"{k:>16}" for k in keys))
    for name, m in medians.items():
        print(f"{name:24}" + "".join(f"{m[k]:>16.1f}" if k in m else f"{'-':>16}" for k in keys))
        print(f"{'  ratio to Pool':24}" + "".join(
            f"{m[k] / base[k]:>15.2f}x" if k in m and k in base and base[k] else f"{'':>16}" for k in keys))
    if args.json:
        Path(args.json).write_text(json.dumps({"sizes": sizes, "repeat": repeat, "medians": medians, "runs": runs},
                                              indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
