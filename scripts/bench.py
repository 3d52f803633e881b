"""Benchmarks: taskpool (memory, sqlite and django stores) against multiprocessing.Pool and
ProcessPoolExecutor, measured in the same run, alternating order, several repetitions, medians.

Workloads (2 workers, one producer); the JSON keys in brackets:
  W1 throughput: N no-op tasks submitted as fast as possible, then waited for; tasks/s from the
                 first submit to the last result.
                 [w1_tasks_per_s]        taskpool: submit_many() in batches of 500 tasks;
                 [w1_single_tasks_per_s] taskpool: one plain submit() per task, the like-for-like
                                         with apply_async.
                 The baselines submit one task per call either way: both keys are their one figure.
                 taskpool waits with taskpool.wait(handles) where the client has it, then reads
                 each result (cached by then); without it, h.result() per handle.
                 [w1_cpu_us_supervisor, _workers, _recorder, _client] taskpool, JSON only: CPU
                                         microseconds per task of each process (workers summed)
                                         during the submit_many run; [w1_cpu_us_total] every
                                         runner: all its processes together
  W2 latency:    sequential round trips: submit one no-op, wait for its result [w2_p50_us, w2_p99_us]
                 taskpool: submit() then result(), as in earlier runs (the issue's targets);
                 [w2_call_p50_us, w2_call_p99_us] taskpool: taskpool.submit_and_wait(), one round
                 trip with the memory store, interleaved with the former. The baselines:
                 apply_async().get() / submit().result(), their one figure under both keys.
  W3 submit:     the submit() call alone, as a view pays it [w3_p50_us, w3_p99_us]. memory and
                 sqlite: taskpool.submit(). django: a view-like function with the ORM on SQLite:
                 in transaction.atomic() it reads a user (not timed), then calls submit(); the time
                 runs from submit() to the end of the block, so it includes the row insert, the
                 commit and the supervisor notification made on commit.
  W4 efficiency: tasks of ~10 ms pure-Python CPU; their own process_time() summed over
                 (workers x wall time) [w4_efficiency]
  RSS, taskpool: supervisor + workers + recorder, MiB (sums of RSS: pages the forked processes
                 share count once per process). [start_rss_mib] idle, right after the start
                 (the issue's idle figure); [idle_rss_mib] idle after the workloads (the
                 supervisor still caches their results); [backlog_rss_mib] with a backlog of
                 READY tasks, [backlog_rss_growth_mib] the difference: every worker held by a gate
                 task, then 100,000 no-ops submitted in batches (10,000 with --quick), measured
                 once the supervisor reports them READY. It runs with --max-ready 100000, so it
                 holds the whole backlog in memory: the worst case (at the default 10,000 a
                 durable store keeps the rest on disk; the memory store refuses past it).
                 JSON only: PSS sums [start_pss_mib, idle_pss_mib, backlog_pss_mib], the READY
                 count measured [backlog_ready],
                 and the status updates the recorder still owed when the workloads ended
                 [recorder_pending_after_w4; durable stores only].

The django runner sets up Django in the bench process (django.setup() with
bench_django_settings, migrations into a fresh SQLite file) and starts the supervisor in
Django mode; each of its repetitions runs in a child process of its own (see DjangoRunner).

Order within a runner: W2, W3, W1, W4, then RSS (see measure()).

Ratios are against multiprocessing.Pool in the same repetition (medians of the per-repetition
ratios; for latency and submit cost below 1 is better). TARGETS (issue 5) are checked against
the medians. --quick finishes in under a minute.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib.util
import json
import multiprocessing
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_tasks  # noqa: E402

import taskpool  # noqa: E402
from taskpool.client import Client, TaskHandle, submit_many  # noqa: E402
from taskpool.protocol import StatsRequest  # noqa: E402
from taskpool.stores import open_store  # noqa: E402

WORKERS = 2
BATCH = 500  # tasks per submit_many() call in W1
MAX_READY = 100_000  # the supervisor's --max-ready (and --result-cache)
DJANGO_SETTINGS = "bench_django_settings"
POOL = "multiprocessing.Pool"

FULL_SIZES = {"w1": 20_000, "w2": 1000, "w3": 1000, "w4": 200, "backlog": 100_000}
QUICK_SIZES = {"w1": 2000, "w2": 200, "w3": 200, "w4": 100, "backlog": 10_000}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def elapsed_since(start: float) -> float:
    return time.perf_counter() - start


# -- baselines ------------------------------------------------------------------


def _tree_cpu() -> float:
    """CPU seconds of this process and its children so far."""
    total = 0.0
    me = psutil.Process()
    for proc in [me, *me.children()]:
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


class BaselineRunner:
    """The workloads for a stdlib pool; subclasses say only how to start and stop it,
    submit a call and get its result, so both baselines run exactly the same loops."""

    name = ""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def call(self, fn: Callable, *args: Any) -> Any:
        raise NotImplementedError

    def get(self, pending: Any) -> Any:
        raise NotImplementedError

    def __enter__(self) -> BaselineRunner:
        self.start()
        self.get(self.call(bench_tasks.noop_fn, 0))  # the workers are up
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def throughput(self, n: int) -> dict[str, float]:
        before = _tree_cpu()
        start = time.perf_counter()
        pending = [self.call(bench_tasks.noop_fn, i) for i in range(n)]
        for p in pending:
            self.get(p)
        rate = n / elapsed_since(start)
        cpu = (_tree_cpu() - before) / n * 1e6  # this process (all its threads) and its pool's workers
        return {"w1_tasks_per_s": rate, "w1_single_tasks_per_s": rate, "w1_cpu_us_total": cpu}  # one call per task


    def latency(self, n: int) -> dict[str, list[float]]:
        out = []
        for i in range(n):
            start = time.perf_counter()
            self.get(self.call(bench_tasks.noop_fn, i))
            out.append(elapsed_since(start))
        return {"w2": out, "w2_call": out}  # one way to wait for a result here

    def submit_cost(self, n: int) -> list[float]:
        out, pending = [], []
        for i in range(n):
            start = time.perf_counter()
            pending.append(self.call(bench_tasks.noop_fn, i))
            out.append(elapsed_since(start))
        for p in pending:
            self.get(p)
        return out

    def efficiency(self, n: int, ms: float) -> float:
        start = time.perf_counter()
        cpu = sum(self.get(p) for p in [self.call(bench_tasks.burn_fn, ms) for _ in range(n)])
        return cpu / (WORKERS * elapsed_since(start))

    def memory(self, backlog: int) -> dict[str, float]:
        return {}  # the pools live in the bench process: no RSS of their own to compare


class PoolRunner(BaselineRunner):
    name = POOL

    def start(self) -> None:
        self.pool = multiprocessing.get_context("fork").Pool(WORKERS)

    def stop(self) -> None:
        self.pool.terminate()
        self.pool.join()

    def call(self, fn: Callable, *args: Any) -> Any:
        return self.pool.apply_async(fn, args)

    def get(self, pending: Any) -> Any:
        return pending.get()


class ExecutorRunner(BaselineRunner):
    name = "ProcessPoolExecutor"

    def start(self) -> None:
        self.pool = concurrent.futures.ProcessPoolExecutor(WORKERS, mp_context=multiprocessing.get_context("fork"))

    def stop(self) -> None:
        self.pool.shutdown(cancel_futures=True)

    def call(self, fn: Callable, *args: Any) -> Any:
        return self.pool.submit(fn, *args)

    def get(self, pending: Any) -> Any:
        return pending.result()


# -- taskpool -------------------------------------------------------------------


def wait_all(handles: Sequence[TaskHandle], timeout: float = 600.0) -> list:
    """The handles' results in order: one taskpool.wait() for all where the client has it
    (results then come from its cache), else a round trip per handle."""
    waiter = getattr(taskpool, "wait", None)
    if waiter is not None:
        waiter(handles, timeout=timeout)
    return [h.result(timeout=timeout) for h in handles]


class TaskpoolRunner:
    """A supervisor subprocess on a temp spool, and this process as its one producer."""

    def __init__(self, store: str, prefetch: int | None = None) -> None:
        self.store_name = store
        self.prefetch = prefetch  # None: the supervisor's default
        self.name = f"taskpool ({store})" if prefetch is None else f"taskpool ({store}, prefetch {prefetch})"

    def prepare(self) -> None:
        """Set up what the producer needs before the supervisor starts (nothing here)."""

    def supervisor_env(self) -> dict[str, str]:
        path = [str(HERE), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
        env.pop("DJANGO_SETTINGS_MODULE", None)  # a plain supervisor
        return env

    def __enter__(self) -> TaskpoolRunner:
        self.dir = Path(tempfile.mkdtemp(prefix="taskpool-bench-"))
        self.spool = self.dir / "spool"
        self.gate = self.dir / "gate"
        try:
            self.prepare()
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "taskpool", "--spool", str(self.spool), "--workers", str(WORKERS),
             "--import", "bench_tasks", "--store", self.store_name, "--log-level", "WARNING",
             "--max-ready", str(MAX_READY), "--result-cache", str(MAX_READY),
             *([] if self.prefetch is None else ["--prefetch", str(self.prefetch)])],
            # cwd: not this checkout, or ``-m taskpool`` would import the package from it, compiled
            # from source where no .pyc may be written (PYTHONDONTWRITEBYTECODE): +2.7 MiB of RSS
            env=self.supervisor_env(), start_new_session=True, cwd=self.dir,
        )
        try:
            taskpool.configure(spool=str(self.spool), socket="", store=self.store_name)  # for plain submit()
            self.client = Client(str(self.spool / "taskpool.sock"))
            self.store = open_store(self.store_name, str(self.spool))
            self.wait_started()
            self.start_rss = self.rss()
        except BaseException:
            self.__exit__()
            raise
        return self

    def wait_started(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.name}: the supervisor exited with {self.proc.returncode}")
            try:
                if sum(w["state"] == "idle" for w in self.stats()["workers"]) == WORKERS:
                    return
            except Exception:
                pass
            time.sleep(0.05)
        raise SystemExit(f"{self.name}: the supervisor did not start within 60 s")

    def __exit__(self, *exc: object) -> None:
        self.gate.touch()  # let the gate tasks of a backlog measurement end, so the stop is quick
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            print(f"  {self.name}: the supervisor did not stop within 60 s; killed", file=sys.stderr)
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def stats(self) -> dict:
        return self.client.request(StatsRequest()).data  # type: ignore[attr-defined]

    def submit_as_view(self, i: int) -> tuple[TaskHandle, float]:
        """W3: one submit() and the seconds the caller spent in it."""
        start = time.perf_counter()
        handle = taskpool.submit(bench_tasks.noop, i)
        return handle, elapsed_since(start)

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds used so far by the supervisor, its workers (summed), its recorder and
        this process (the producer)."""
        def used(proc: psutil.Process) -> float:
            times = proc.cpu_times()
            return times.user + times.system

        top = psutil.Process(self.proc.pid)
        out = {"supervisor": used(top), "workers": 0.0, "recorder": 0.0, "client": used(psutil.Process())}
        for child in top.children():
            try:
                out["recorder" if "recorder" in child.name() + " ".join(child.cmdline()) else "workers"] += used(child)
            except psutil.NoSuchProcess:
                pass
        return out

    def throughput(self, n: int) -> dict[str, float]:
        before = self.cpu_seconds()
        start = time.perf_counter()
        handles: list[TaskHandle] = []
        for base in range(0, n, BATCH):
            calls = [(bench_tasks.noop, (i,)) for i in range(base, min(n, base + BATCH))]
            handles += submit_many(calls, client=self.client, store=self.store)
        wait_all(handles)
        many = n / elapsed_since(start)
        after = self.cpu_seconds()
        # CPU per task of each process during W1 (submit_many): where the two cores went
        cpu = {f"w1_cpu_us_{k}": (after[k] - before[k]) / n * 1e6 for k in after}
        cpu["w1_cpu_us_total"] = sum(cpu.values())
        start = time.perf_counter()
        handles = [taskpool.submit(bench_tasks.noop, i) for i in range(n)]
        wait_all(handles)
        return {"w1_tasks_per_s": many, "w1_single_tasks_per_s": n / elapsed_since(start), **cpu}

    def latency(self, n: int) -> dict[str, list[float]]:
        """submit().result() and submit_and_wait(), alternately, ``n`` of each."""
        call = getattr(taskpool, "submit_and_wait", None)
        pair, one = [], []
        for i in range(n):
            start = time.perf_counter()
            taskpool.submit(bench_tasks.noop, i).result(timeout=60)
            pair.append(elapsed_since(start))
            start = time.perf_counter()
            if call is None:  # a taskpool from before submit_and_wait
                taskpool.submit(bench_tasks.noop, i).result(timeout=60)
            else:
                call(bench_tasks.noop, (i,), timeout=60)
            one.append(elapsed_since(start))
        return {"w2": pair, "w2_call": one}

    def submit_cost(self, n: int) -> list[float]:
        out, pending = [], []
        for i in range(n):
            handle, seconds = self.submit_as_view(i)
            pending.append(handle)
            out.append(seconds)
        wait_all(pending)
        return out

    def efficiency(self, n: int, ms: float) -> float:
        start = time.perf_counter()
        handles = submit_many([(bench_tasks.burn, (ms,)) for _ in range(n)], client=self.client, store=self.store)
        cpu = sum(wait_all(handles))
        return cpu / (WORKERS * elapsed_since(start))

    def rss(self) -> tuple[float, float]:
        """Supervisor + workers + recorder, MiB: the sum of RSS (the issue's figure; pages the
        forked processes share count once per process) and the sum of PSS (shared pages split)."""
        top = psutil.Process(self.proc.pid)
        rss = pss = 0
        for proc in [top, *top.children(recursive=True)]:
            try:
                info = proc.memory_full_info()
            except psutil.NoSuchProcess:
                continue
            rss += info.rss
            pss += getattr(info, "pss", 0)
        return rss / 2**20, pss / 2**20

    def memory(self, backlog: int) -> dict[str, float]:
        """Idle RSS now, then RSS with ``backlog`` no-ops READY behind workers held by gates.
        Also how many status updates the recorder still owes (it may lag the workloads)."""
        recorder = self.stats()["recorder"]
        idle, idle_pss = self.rss()
        self.hold_workers()
        for base in range(0, backlog, 1000):
            calls = [(bench_tasks.noop, (i,)) for i in range(base, min(backlog, base + 1000))]
            submit_many(calls, client=self.client, store=self.store)
        ready = self.wait_ready(backlog)
        full, full_pss = self.rss()
        self.gate.touch()
        figures = {"idle_rss_mib": idle, "backlog_rss_mib": full, "backlog_rss_growth_mib": full - idle,
                   "idle_pss_mib": idle_pss, "backlog_pss_mib": full_pss, "backlog_ready": float(ready),
                   "start_rss_mib": self.start_rss[0], "start_pss_mib": self.start_rss[1]}
        if recorder is not None:  # none with the memory store
            figures["recorder_pending_after_w4"] = float(recorder.get("pending", 0) + recorder.get("in_flight", 0))
        return figures

    def hold_workers(self) -> None:
        """Put a gate task on every worker, so what is submitted next stays READY. Should the
        supervisor hand two gates to one worker (prefetch), another gate follows."""
        gates = submit_many([(bench_tasks.gate, (str(self.gate),))] * WORKERS, client=self.client, store=self.store)
        more_at, deadline = time.monotonic() + 5, time.monotonic() + 60
        while time.monotonic() < deadline:
            held = sum(w["task_name"] == bench_tasks.gate.name for w in self.stats()["workers"])
            if held >= WORKERS:
                return
            if time.monotonic() > more_at and len(gates) < 4 * WORKERS:
                gates += submit_many([(bench_tasks.gate, (str(self.gate),))], client=self.client, store=self.store)
                more_at = time.monotonic() + 5
            time.sleep(0.02)
        raise RuntimeError(f"{self.name}: gate tasks did not occupy the {WORKERS} workers within 60 s")

    def wait_ready(self, n: int) -> int:
        """Wait until the supervisor reports the backlog READY; returns its count. A count that
        stays put at 90% or more is taken too (a worker may hold a few prefetched)."""
        last, still, deadline = -1, 0, time.monotonic() + 300
        while time.monotonic() < deadline:
            ready = self.stats()["queue"]["ready"]
            if ready >= n:
                return ready
            still = still + 1 if ready == last else 0
            if still >= 20 and ready >= 0.9 * n:
                return ready
            last = ready
            time.sleep(0.05)
        raise RuntimeError(f"{self.name}: the supervisor holds {last} READY tasks of the {n} submitted")


class DjangoRunner(TaskpoolRunner):
    """The django store through Django: this process is the producer of a Django project
    (bench_django_settings, a fresh SQLite file in the runner's temp dir) and the supervisor
    runs in Django mode.

    django.setup() can happen once per process and the settings fix the database path then,
    so each repetition runs in a child process of its own (see run_isolated): a fresh
    database per repetition, as the sqlite runner gets a fresh spool, no rows or heartbeats
    of an earlier supervisor to clean up, and no Django in the process the other runners
    (and the forked baseline pools) run in."""

    def __init__(self) -> None:
        super().__init__("django")

    def prepare(self) -> None:
        from django.apps import apps

        if apps.ready:
            raise RuntimeError("the django runner sets Django up itself: run it in a process of its own")
        os.environ["DJANGO_SETTINGS_MODULE"] = DJANGO_SETTINGS
        os.environ["TASKPOOL_BENCH_DIR"] = str(self.dir)
        import django

        django.setup()
        from django.contrib.auth.models import User
        from django.core.management import call_command

        call_command("migrate", verbosity=0, interactive=False, skip_checks=True)
        User.objects.create(username="bench")  # what the view-like W3 reads

    def supervisor_env(self) -> dict[str, str]:
        env = super().supervisor_env()
        env.update(DJANGO_SETTINGS_MODULE=DJANGO_SETTINGS, TASKPOOL_BENCH_DIR=str(self.dir))
        return env

    def submit_as_view(self, i: int) -> tuple[TaskHandle, float]:
        """What a view pays for submit(): the row joins the view's transaction and the supervisor
        is told on commit, so the time runs from submit() to the end of the atomic block. The
        user lookup before it stands for the view's own work (it opens the transaction) and is
        not timed."""
        from django.contrib.auth.models import User
        from django.db import transaction

        with transaction.atomic():
            User.objects.filter(username="bench").first()
            start = time.perf_counter()
            handle = taskpool.submit(bench_tasks.noop, i)
        return handle, elapsed_since(start)

    def __exit__(self, *exc: object) -> None:
        from django.db import connections

        connections.close_all()  # before the database file goes with the temp dir
        super().__exit__(*exc)


# -- the run --------------------------------------------------------------------


class Spec(NamedTuple):
    key: str  # for --only
    name: str
    make: Callable[[], Any]
    isolated: bool = False  # each repetition in a child process


RUNNERS = (
    Spec("pool", POOL, PoolRunner),
    Spec("executor", "ProcessPoolExecutor", ExecutorRunner),
    Spec("memory", "taskpool (memory)", lambda: TaskpoolRunner("memory")),
    Spec("sqlite", "taskpool (sqlite)", lambda: TaskpoolRunner("sqlite")),
    # the same with --prefetch 0 (the default sends quick tasks ahead to busy workers; see
    # docs/operations.md): what sending ahead buys
    Spec("memory-prefetch0", "taskpool (memory, prefetch 0)", lambda: TaskpoolRunner("memory", prefetch=0)),
    Spec("sqlite-prefetch0", "taskpool (sqlite, prefetch 0)", lambda: TaskpoolRunner("sqlite", prefetch=0)),
    Spec("django", "taskpool (django)", DjangoRunner, isolated=True),
)


class Target(NamedTuple):
    """A goal from issue 5: ``relative`` ones are ratios to multiprocessing.Pool."""

    runner: str
    figure: str
    op: str  # ">=" or "<="
    goal: float
    relative: bool


TARGETS = (
    Target("taskpool (memory)", "w1_tasks_per_s", ">=", 1.5, True),
    Target("taskpool (memory)", "w2_p50_us", "<=", 0.5, True),
    Target("taskpool (sqlite)", "w1_tasks_per_s", ">=", 0.5, True),
    Target("taskpool (sqlite)", "w2_p50_us", "<=", 0.7, True),
    Target("taskpool (sqlite)", "w3_p50_us", "<=", 60, False),
    Target("taskpool (django)", "w1_tasks_per_s", ">=", 0.25, True),
    Target("taskpool (django)", "w3_p50_us", "<=", 300, False),
    Target("taskpool (memory)", "w4_efficiency", ">=", 0.95, False),
    Target("taskpool (memory)", "start_rss_mib", "<=", 60, False),  # idle: after start, before any work
    Target("taskpool (sqlite)", "start_rss_mib", "<=", 60, False),
    # backlog RSS <= idle + 50 MiB
    Target("taskpool (memory)", "backlog_rss_growth_mib", "<=", 50, False),
    Target("taskpool (sqlite)", "backlog_rss_growth_mib", "<=", 50, False),
    Target("taskpool (django)", "backlog_rss_growth_mib", "<=", 50, False),
)

COLUMNS = (  # key, heading, format
    ("w1_tasks_per_s", "W1 tasks/s", ".0f"),
    ("w1_single_tasks_per_s", "W1 single/s", ".0f"),
    ("w2_p50_us", "W2 p50 us", ".1f"),
    ("w2_p99_us", "W2 p99 us", ".1f"),
    ("w2_call_p50_us", "W2 call p50", ".1f"),
    ("w3_p50_us", "W3 p50 us", ".1f"),
    ("w3_p99_us", "W3 p99 us", ".1f"),
    ("w4_efficiency", "W4 eff", ".2f"),
    ("start_rss_mib", "start MiB", ".1f"),
    ("idle_rss_mib", "after MiB", ".1f"),
    ("backlog_rss_mib", "backlog MiB", ".1f"),
    ("backlog_rss_growth_mib", "growth MiB", ".1f"),
)


def measure(runner: Any, sizes: dict[str, int]) -> dict[str, float]:
    """One runner's figures. W2 and W3 come first, so they see a quiet system: W1's burst leaves
    a durable store's recorder writing status updates for a while (with the django store, for
    longer than the rest of the run), and sharing the database and the 2 cores with it would
    inflate the latency and submit cost; W4 does run after W1 (recorder_pending_after_w4 shows
    how much work the recorder still had then)."""
    with runner as r:
        w2 = r.latency(sizes["w2"])
        w3 = r.submit_cost(sizes["w3"])
        figures = r.throughput(sizes["w1"])
        figures["w4_efficiency"] = r.efficiency(sizes["w4"], 10.0)
        figures.update(r.memory(sizes["backlog"]))
    for key, times in w2.items():
        figures[f"{key}_p50_us"] = percentile(times, 0.5) * 1e6
        figures[f"{key}_p99_us"] = percentile(times, 0.99) * 1e6
    figures["w3_p50_us"] = percentile(w3, 0.5) * 1e6
    figures["w3_p99_us"] = percentile(w3, 0.99) * 1e6
    return figures


def run_isolated(spec: Spec, sizes: dict[str, int]) -> dict[str, float]:
    """One repetition of ``spec`` in a fresh interpreter (``--child``); its figures."""
    with tempfile.TemporaryDirectory(prefix="taskpool-bench-") as tmp:
        out = Path(tmp) / "figures.json"
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", spec.key,
                               "--sizes", json.dumps(sizes), "--out", str(out)])
        if proc.returncode != 0:
            raise SystemExit(f"{spec.name}: the child process failed with exit status {proc.returncode}")
        return json.loads(out.read_text())


def select(only: str | None) -> list[Spec]:
    if not only:
        return list(RUNNERS)
    wanted = {w.strip() for w in only.split(",") if w.strip()}
    unknown = wanted - {s.key for s in RUNNERS} - {s.name for s in RUNNERS}
    if unknown:
        keys = ", ".join(s.key for s in RUNNERS)
        raise SystemExit(f"bench: unknown runner(s) {', '.join(sorted(unknown))}; choose from {keys}")
    return [s for s in RUNNERS if s.key in wanted or s.name in wanted]


def ratios_to_pool(runs: dict[str, list[dict]]) -> dict[str, dict[str, float]]:
    """Per runner and figure, the median over repetitions of figure / Pool's figure in the same
    repetition."""
    base = runs.get(POOL)
    if not base:
        return {}
    out = {}
    for name, reps in runs.items():
        out[name] = {k: statistics.median(r[k] / b[k] for r, b in zip(reps, base, strict=True))
                     for k in reps[0] if all(b.get(k) for b in base)}
    return out


def check_targets(medians: dict[str, dict], ratios: dict[str, dict]) -> list[dict]:
    """Each target with the value it is judged on and whether it is met (None: not measured)."""
    out = []
    for t in TARGETS:
        source = ratios if t.relative else medians
        value = source.get(t.runner, {}).get(t.figure)
        met = None if value is None else (value >= t.goal if t.op == ">=" else value <= t.goal)
        out.append({**t._asdict(), "value": value, "met": met})
    return out


def _echo(sock: Any, relay: Any = None) -> None:
    """In a forked child: answer every message (through ``relay`` first, if given)."""
    while data := sock.recv(64):
        if relay is not None:
            relay.sendall(data)
            data = relay.recv(64)
        sock.sendall(data)
    os._exit(0)


def socket_floor(n: int) -> dict[str, float]:
    """The latency floor of this machine, measured in the same run: p50 round trips of a
    one-byte message between two Python processes over a Unix socketpair, and through a
    middle process (client -> middle -> end and back: the shape of submit-and-wait through
    a supervisor to a worker), with no framing, decoding or bookkeeping at all."""
    import socket

    figures = {}
    for key, hops in (("floor_rtt_2proc_us", 1), ("floor_rtt_3proc_us", 2)):
        ends = [socket.socketpair() for _ in range(hops)]
        pids = []
        for i in range(hops):  # child i answers on ends[i][1], relaying to ends[i + 1][0]
            pid = os.fork()
            if pid == 0:
                _echo(ends[i][1], ends[i + 1][0] if i + 1 < hops else None)
            pids.append(pid)
        ours = ends[0][0]
        times = []
        for _ in range(n):
            start = time.perf_counter()
            ours.sendall(b"x")
            ours.recv(64)
            times.append(elapsed_since(start))
        for pid in pids:  # each child holds copies of every end: no EOF would reach it
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        for a, b in ends:
            a.close()
            b.close()
        figures[key] = percentile(times, 0.5) * 1e6
    return figures


def editable_install() -> bool:
    """Whether this interpreter loads setuptools' editable-install hook at start (``pip install
    -e``): it adds pathlib, re and urllib.parse to every process, ~1.5 MiB of RSS each, which
    a deployment's regular install does not have. scripts/bench uses a regular install."""
    return any(name.startswith("__editable__") for name in sys.modules)


def print_report(medians: dict[str, dict], ratios: dict[str, dict], targets: list[dict], backlog: int,
                 quick: bool, floor: dict[str, float] | None = None) -> None:
    print(f"\n{'':24}" + "".join(f"{heading:>13}" for _, heading, _ in COLUMNS))
    for name, m in medians.items():
        print(f"{name:24}" + "".join(f"{m[k]:>13{fmt}}" if k in m else f"{'-':>13}" for k, _, fmt in COLUMNS))
        if name in ratios:
            r = ratios[name]
            print(f"{'  ratio to Pool':24}" + "".join(f"{r[k]:>12.2f}x" if k in r else f"{'':>13}" for k, _, _ in COLUMNS))
    if floor:
        print(f"\nfloor (this machine, this run): socket round trip p50 {floor['floor_rtt_2proc_us']:.1f} us between two "
              f"processes, {floor['floor_rtt_3proc_us']:.1f} us through a middle one")
    note = " (--quick; the issue's figure is 100,000)" if quick else ""
    print(f"\nbacklog: {backlog:,} READY no-ops{note}, supervisor --max-ready {MAX_READY}; "
          f"W1/W4 wait with {'taskpool.wait()' if hasattr(taskpool, 'wait') else 'h.result() per handle'}")
    if editable_install():
        print("RSS: measured with an editable install of taskpool (pip install -e): its import hook is in every "
              "process; scripts/bench measures a regular install")
    judged = [t for t in targets if t["met"] is not None]
    caveat = " (--quick: small sizes, indicative only)" if quick else ""
    print(f"targets (issue 5): {sum(t['met'] for t in judged)} of {len(judged)} met{caveat}")
    for t in targets:
        goal = f"{t['op']} {t['goal']:g}{'x Pool' if t['relative'] else ''}"
        if t["value"] is None:
            verdict, value = "n/a ", "not measured"
        else:
            verdict, value = ("met " if t["met"] else "MISS"), f"{t['value']:.2f}{'x' if t['relative'] else ''}"
        print(f"  {verdict}  {t['runner']:20} {t['figure']:24} {goal:14} {value}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, 1 repetition (under a minute)")
    parser.add_argument("--repeat", type=int, default=None, help="repetitions (default 3, 1 with --quick)")
    parser.add_argument("--only", metavar="NAME[,NAME]",
                        help=f"run only these runners ({', '.join(s.key for s in RUNNERS)}); ratios need pool")
    parser.add_argument("--json", metavar="FILE", help="write sizes, medians, ratios, targets and every run")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: one repetition of one runner
    parser.add_argument("--sizes", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        spec = select(args.child)[0]
        Path(args.out).write_text(json.dumps(measure(spec.make(), json.loads(args.sizes))))
        return 0

    started = time.monotonic()
    sizes = QUICK_SIZES if args.quick else FULL_SIZES
    repeat = args.repeat or (1 if args.quick else 3)
    specs = select(args.only)
    if importlib.util.find_spec("django") is None and any(s.key == "django" for s in specs):
        if args.only:
            raise SystemExit("bench: the django runner needs Django: pip install -e '.[django]'")
        specs = [s for s in specs if s.key != "django"]
        print("bench: Django is not installed: taskpool (django) skipped (pip install -e '.[django]')", file=sys.stderr)
    runs: dict[str, list[dict]] = {s.name: [] for s in specs}
    for rep in range(repeat):
        order = specs if rep % 2 == 0 else list(reversed(specs))  # alternate A/B order
        for spec in order:
            figures = run_isolated(spec, sizes) if spec.isolated else measure(spec.make(), sizes)
            runs[spec.name].append(figures)
            print(f"  run {rep + 1}/{repeat}: {spec.name} done", file=sys.stderr)
    medians = {n: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for n, rs in runs.items()}
    ratios = ratios_to_pool(runs)
    targets = check_targets(medians, ratios)
    floor = socket_floor(sizes["w2"] * 2)
    print_report(medians, ratios, targets, sizes["backlog"], args.quick, floor)
    elapsed = time.monotonic() - started
    print(f"\nfinished in {elapsed:.1f} s", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "sizes": sizes, "repeat": repeat, "quick": args.quick, "workers": WORKERS, "max_ready": MAX_READY,
            "waiting": "taskpool.wait" if hasattr(taskpool, "wait") else "result_per_handle",
            "editable_install": editable_install(),
            "runners": [s.name for s in specs], "medians": medians, "ratios_to_pool": ratios,
            "targets": targets, "runs": runs, "floor": floor, "elapsed_s": elapsed,
        }, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
