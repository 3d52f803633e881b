"""Soak: a steady mixed workload against one real supervisor for a set time, with random
worker SIGKILLs and SIGHUP reloads, then check that nothing was lost or leaked.

The mix (scripts/soak_tasks.py): 70% fast no-ops, 10% slow (0.2 s), 10% raise (FAILED,
no retry), 4% kill their own worker on the first run (run again: SUCCESSFUL), 1% kill
their worker on every run (FAILED with WorkerLost after 3), 5% overrun a 0.3 s timeout
(FAILED with TaskTimeout).

At the end, once every task is final (or --drain-timeout passes), it reports: tasks
submitted and done; lost (not final); wrong (final, but not the status and error its kind
must give; a task whose every attempt was ended by the soak's own kills is FAILED with
WorkerLost by rule, and is counted apart as out of attempts); runs per task from the run
logs (duplicated: more runs than the kind needs, the at-least-once cost of the kills;
runs beyond attempts or after the final status, and SUCCESSFUL tasks that never ran,
which no kill explains); supervisor RSS after the warm-up and at the end, and with its
children; p50/p99 latency from submit to final status of the fast tasks. Exits 1 if
anything was lost, wrong or unexplained, if the supervisor logged an ERROR or a traceback,
or if its RSS grew by more than --rss-bound-mib. Every process it started is killed by
pid on the way out, Ctrl-C included. The seed fixes the mix; the kills and HUPs land
where timing puts them.
"""

from __future__ import annotations

import argparse
import atexit
import json
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import soak_tasks  # noqa: E402

from taskpool.client import Client, submit_many  # noqa: E402
from taskpool.errors import SupervisorUnavailable, TaskpoolError  # noqa: E402
from taskpool.protocol import FINAL_STATUSES, StatsRequest  # noqa: E402
from taskpool.stores import open_store  # noqa: E402

MIB = 1024 * 1024
WORKER_PID = re.compile(r"worker pid (\d+) ")


@dataclass(frozen=True)
class Kind:
    task: Any
    weight: int
    status: str  # the final status this kind must end with
    error: str | None  # the type of the last error, for FAILED kinds
    runs: int  # runs it needs when nothing else kills its worker


KINDS: dict[str, Kind] = {
    "fast": Kind(soak_tasks.fast, 70, "SUCCESSFUL", None, 1),
    "slow": Kind(soak_tasks.slow, 10, "SUCCESSFUL", None, 1),
    "fail": Kind(soak_tasks.fail, 10, "FAILED", "builtins.ValueError", 1),
    "crash_once": Kind(soak_tasks.crash_once, 4, "SUCCESSFUL", None, 2),
    "crash_always": Kind(soak_tasks.crash_always, 1, "FAILED", "taskpool.errors.WorkerLost", 3),
    "too_slow": Kind(soak_tasks.too_slow, 5, "FAILED", "taskpool.errors.TaskTimeout", 1),
}


@dataclass(slots=True)
class Submitted:
    token: str
    kind: str
    task_id: str
    submitted_at: float  # wall clock, comparable with the store's finished_at


class Supervisor:
    """One ``python -m taskpool`` supervisor in its own session; remembers every process it saw
    (as psutil objects, so a recycled pid is never killed) for the cleanup."""

    def __init__(self, spool: Path, workers: int, result_cache: int, log: Path) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p)}
        env.pop("DJANGO_SETTINGS_MODULE", None)  # a plain supervisor with the sqlite store
        with open(log, "a") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "taskpool", "--spool", str(spool), "--workers", str(workers),
                 "--import", "soak_tasks", "--result-cache", str(result_cache), "--graceful-timeout", "5"],
                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        self.process = psutil.Process(self.proc.pid)
        self.seen: dict[int, psutil.Process] = {self.proc.pid: self.process}
        self.client = Client(str(spool / "taskpool.sock"), timeout=5.0)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stats(self) -> dict | None:
        try:
            return self.client.request(StatsRequest()).data
        except (SupervisorUnavailable, OSError):
            return None

    def children(self) -> list[psutil.Process]:
        try:
            children = self.process.children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        for child in children:
            self.seen.setdefault(child.pid, child)
        return children

    def rss(self) -> tuple[int, int]:
        """(supervisor RSS, supervisor + workers + recorder RSS) in bytes."""
        own = self.process.memory_info().rss
        total = own
        for child in self.children():
            try:
                total += child.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return own, total

    def stop(self) -> None:
        """TERM and wait; then SIGKILL whatever is left of every process seen, by pid."""
        self.children()
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        left = []
        for process in self.seen.values():
            try:
                if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                    process.kill()
                    left.append(process)
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(left, timeout=5)

    def identities(self) -> list[list[float]]:
        """[pid, create_time] of every process seen, for callers that check they are gone."""
        return [[pid, process.create_time()] for pid, process in self.seen.items() if _has_create_time(process)]


def _has_create_time(process: psutil.Process) -> bool:
    try:
        process.create_time()
        return True
    except psutil.Error:
        return False


def jitter(rng: random.Random, every: float) -> float:
    return rng.uniform(0.5, 1.5) * every


def percentile(values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(fraction * len(ordered) + 0.5)))
    return ordered[rank - 1]


def run_load(sup: Supervisor, store: Any, args: argparse.Namespace, rng: random.Random, where: str,
             tasks: list[Submitted], figures: Counter, rss: dict, killed: set[int]) -> None:
    """Submit at a steady rate for ``args.duration`` seconds while killing workers and
    sending HUPs; sample RSS once a second and take the start figure after the warm-up."""
    kinds = list(KINDS)
    mix = random.Random(f"{args.seed}-mix")
    weights = [KINDS[k].weight for k in kinds]
    began = time.monotonic()
    end = began + args.duration
    next_kill = began + jitter(rng, args.kill_every) if args.kill_every > 0 else float("inf")
    next_hup = began + jitter(rng, args.hup_every) if args.hup_every > 0 else float("inf")
    next_sample = began
    warm_at = began + args.warmup
    issued = 0  # submits tried, refused ones included
    while (now := time.monotonic()) < end:
        if not sup.alive():
            raise RuntimeError(f"the supervisor exited with status {sup.proc.returncode} during the soak")
        due = min(int((now - began) * args.rate) + 1 - issued, 200)
        if due > 0:
            calls, batch = [], []
            for _ in range(due):
                token, kind = f"t{issued}", mix.choices(kinds, weights)[0]
                calls.append((KINDS[kind].task, (token, where)))
                batch.append((token, kind))
                issued += 1
            submitted_at = time.time()
            try:
                handles = submit_many(calls, client=sup.client, store=store)
            except TaskpoolError as exc:
                figures["submit_errors"] += len(calls)
                logging.error("submit refused: %s", exc)
            else:
                tasks.extend(Submitted(t, k, h.id, submitted_at) for (t, k), h in zip(batch, handles, strict=True))
        if now >= next_kill:
            next_kill = now + jitter(rng, args.kill_every)
            data = sup.stats()
            victims = [w["pid"] for w in (data or {}).get("workers", []) if w["state"] in ("idle", "busy")]
            if victims:
                victim = rng.choice(victims)
                try:
                    os.kill(victim, signal.SIGKILL)
                    figures["kills"] += 1
                    killed.add(victim)
                except ProcessLookupError:
                    figures["kills_missed"] += 1
            else:
                figures["kills_missed"] += 1
        if now >= next_hup:
            next_hup = now + jitter(rng, args.hup_every)
            os.kill(sup.pid, signal.SIGHUP)
            figures["hups"] += 1
        if now >= next_sample:
            next_sample = now + 1.0
            own, total = sup.rss()
            rss["samples"].append([round(now - began, 1), own, total])
            if "start" not in rss and now >= warm_at:
                rss["start"], rss["start_total"] = own, total
        wake = min(began + issued / args.rate, next_kill, next_hup, next_sample, end)
        time.sleep(max(0.0, wake - time.monotonic()))
    if "start" not in rss:  # a run shorter than its warm-up
        rss["start"], rss["start_total"] = sup.rss()


def wait_final(store: Any, count: int, timeout: float, sup: Supervisor) -> bool:
    """Poll the store until ``count`` rows are final (the spool holds only this soak's rows)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        counts = store.counts()
        if sum(counts.get(s, 0) for s in FINAL_STATUSES) >= count:
            return True
        if not sup.alive():
            return False
        time.sleep(0.2)
    return False


def read_runs(runs_dir: Path) -> tuple[dict[str, list[float]], int]:
    """Start times of every run, by token, from all the per-worker logs; and bad lines."""
    runs: dict[str, list[float]] = {}
    bad = 0
    for path in runs_dir.glob("*.log"):
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) != 3:
                bad += 1
                continue
            runs.setdefault(parts[0], []).append(float(parts[2]))
    return runs, bad


def killed_by_soak(row: Any, killed: set[int]) -> bool:
    """Every attempt was spent and the last one was ended by one of the soak's own kills:
    FAILED with WorkerLost is then the right outcome, whatever the kind."""
    if row.status != "FAILED" or row.attempts < row.max_attempts or not row.errors:
        return False
    last = row.errors[-1]
    match = WORKER_PID.search(last.get("message", ""))
    return last["type"] == "taskpool.errors.WorkerLost" and match is not None and int(match.group(1)) in killed


def verify(store: Any, tasks: list[Submitted], runs: dict[str, list[float]], killed: set[int]) -> dict:
    """Compare each task's row and runs with what its kind must give."""
    result: Counter = Counter()
    latencies: list[float] = []
    examples: list[dict] = []
    for item in tasks:
        kind = KINDS[item.kind]
        row = store.fetch(item.task_id)
        started = runs.get(item.token, [])
        result["runs"] += len(started)
        if row is None or row.status not in FINAL_STATUSES:
            result["lost"] += 1
            if len(examples) < 10:
                examples.append({"problem": "lost", "token": item.token, "kind": item.kind, "task_id": item.task_id,
                                 "status": row.status if row else None, "attempts": row.attempts if row else None})
            continue
        result["done"] += 1
        result[f"{row.status.lower()}"] += 1
        last_error = row.errors[-1]["type"] if row.errors else None
        if killed_by_soak(row, killed):
            result["exhausted_by_kills"] += 1
        elif row.status != kind.status or (kind.error is not None and last_error != kind.error):
            result["wrong"] += 1
            if len(examples) < 10:
                examples.append({"problem": "wrong", "token": item.token, "kind": item.kind, "task_id": item.task_id,
                                 "status": row.status, "errors": [e["type"] for e in row.errors]})
        result["duplicated_runs"] += max(0, len(started) - kind.runs)
        result["runs_beyond_attempts"] += max(0, len(started) - row.attempts)
        result["runs_after_final"] += sum(1 for t in started if row.finished_at and t > row.finished_at + 0.001)
        if row.status == "SUCCESSFUL" and not started:
            result["successful_not_run"] += 1
        if item.kind == "fast" and row.status == "SUCCESSFUL" and row.finished_at:
            latencies.append(row.finished_at - item.submitted_at)
    figures = {key: result[key] for key in (
        "done", "lost", "wrong", "exhausted_by_kills", "successful", "failed", "cancelled", "runs", "duplicated_runs",
        "runs_beyond_attempts", "runs_after_final", "successful_not_run")}
    p50, p99 = percentile(latencies, 0.50), percentile(latencies, 0.99)
    figures.update(
        fast_latency_p50_ms=round(p50 * 1000, 1) if p50 is not None else None,
        fast_latency_p99_ms=round(p99 * 1000, 1) if p99 is not None else None,
        fast_latency_max_ms=round(max(latencies) * 1000, 1) if latencies else None,
        problems=examples,
    )
    return figures


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load (default 60)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=None, help="random seed for the mix, kills and HUPs")
    parser.add_argument("--rate", type=float, default=20.0, help="tasks submitted per second (default 20)")
    parser.add_argument("--kill-every", type=float, default=5.0, help="mean seconds between worker SIGKILLs (0: none)")
    parser.add_argument("--hup-every", type=float, default=10.0, help="mean seconds between SIGHUPs (0: none)")
    parser.add_argument("--warmup", type=float, default=None,
                        help="seconds before the start RSS is taken (default: 10%% of the duration, 1 to 10 s)")
    parser.add_argument("--result-cache", type=int, default=200,
                        help="the supervisor's --result-cache: small, so its finished-task cache is full early and "
                             "what RSS growth is left is a leak (default 200)")
    parser.add_argument("--rss-bound-mib", type=float, default=20.0,
                        help="fail if the supervisor's RSS grows more than this from the warm-up to the end")
    parser.add_argument("--drain-timeout", type=float, default=120.0, help="seconds to wait for every task to be final")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the spool and logs even when the run passes")
    args = parser.parse_args()
    if args.warmup is None:
        args.warmup = min(10.0, max(1.0, args.duration * 0.1))
    if args.rate <= 0 or args.duration <= 0 or args.workers < 1:
        parser.error("--rate and --duration must be positive, --workers at least 1")
    return args


def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    logging.getLogger("taskpool.client").setLevel(logging.ERROR)
    args = parse_args()
    if args.seed is None:
        args.seed = random.randrange(1 << 30)
    seed = args.seed
    rng = random.Random(f"{seed}-faults")  # kills and HUPs; the mix has its own, so timing cannot change it
    work = Path(tempfile.mkdtemp(prefix="taskpool-soak-"))
    spool = work / "spool"
    store = open_store("sqlite", str(spool))
    (spool / soak_tasks.RUNS_DIR).mkdir()
    (spool / soak_tasks.MARKERS_DIR).mkdir()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # through the finally below
    tasks: list[Submitted] = []
    figures: Counter = Counter(kills=0, kills_missed=0, hups=0, submit_errors=0)
    rss: dict = {"samples": []}
    killed: set[int] = set()
    error = None
    drained = False
    print(f"soak: seed {seed}, {args.duration:g} s at {args.rate:g} tasks/s, {args.workers} workers, "
          f"kill every ~{args.kill_every:g} s, HUP every ~{args.hup_every:g} s; spool {spool}", flush=True)
    sup = Supervisor(spool, args.workers, args.result_cache, work / "supervisor.log")
    began = time.monotonic()
    try:
        deadline = time.monotonic() + 30
        while sup.stats() is None:
            if not sup.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the supervisor did not start; see {work / 'supervisor.log'}")
            time.sleep(0.05)
        run_load(sup, store, args, rng, str(spool), tasks, figures, rss, killed)
        load_end = time.monotonic()
        drained = wait_final(store, len(tasks), args.drain_timeout, sup)
        drain_seconds = time.monotonic() - load_end
        if sup.alive():
            rss["end"], rss["end_total"] = sup.rss()
            final_stats = sup.stats() or {}
        else:
            error = f"the supervisor exited with status {sup.proc.returncode}"
            final_stats = {}
    except (RuntimeError, TaskpoolError, OSError) as exc:
        error = str(exc)
        drain_seconds, final_stats = 0.0, {}
    except BaseException:  # Ctrl-C, TERM: stop everything (below), leave nothing behind
        if not args.keep:
            atexit.register(shutil.rmtree, work, ignore_errors=True)
        raise
    finally:
        sup.stop()
    log_problems = [line for line in (work / "supervisor.log").read_text(errors="replace").splitlines()
                    if " ERROR " in line or " CRITICAL " in line or line.startswith("Traceback")]
    runs, bad_lines = read_runs(spool / soak_tasks.RUNS_DIR)
    result: dict[str, Any] = {"seed": seed, "duration": args.duration, "rate": args.rate, "workers": args.workers,
                              "submitted": len(tasks), "by_kind": dict(Counter(t.kind for t in tasks))}
    result.update(verify(store, tasks, runs, killed))
    rss_start, rss_end = rss.get("start"), rss.get("end")
    growth = (rss_end - rss_start) / MIB if rss_start and rss_end else None
    result.update(
        kills=figures["kills"], kills_missed=figures["kills_missed"], hups=figures["hups"],
        submit_errors=figures["submit_errors"], bad_run_lines=bad_lines, log_problems=log_problems[:20],
        log_problem_count=len(log_problems), drained=drained,
        drain_seconds=round(drain_seconds, 1), seconds=round(time.monotonic() - began, 1),
        supervisor_rss_start_mib=round(rss_start / MIB, 1) if rss_start else None,
        supervisor_rss_end_mib=round(rss_end / MIB, 1) if rss_end else None,
        supervisor_rss_max_mib=round(max(s[1] for s in rss["samples"]) / MIB, 1) if rss["samples"] else None,
        supervisor_rss_growth_mib=round(growth, 1) if growth is not None else None,
        rss_bound_mib=args.rss_bound_mib,
        total_rss_start_mib=round(rss["start_total"] / MIB, 1) if rss.get("start_total") else None,
        total_rss_end_mib=round(rss["end_total"] / MIB, 1) if rss.get("end_total") else None,
        counters=final_stats.get("counters", {}),
        rss_samples=rss["samples"], pids=sup.identities(), error=error, work=str(work),
    )
    failures = [name for name in ("lost", "wrong", "runs_beyond_attempts", "runs_after_final", "successful_not_run",
                                  "submit_errors", "bad_run_lines", "log_problem_count") if result[name]]
    if error:
        failures.append("error")
    if result["done"] != result["submitted"]:
        failures.append("done != submitted")
    if growth is None or growth > args.rss_bound_mib:
        failures.append("supervisor RSS growth")
    result["failures"] = failures
    print_summary(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    if failures:
        print(f"FAILED: {', '.join(failures)}; the run is kept in {work}")
        return 1
    print("OK: nothing lost, every status as expected, supervisor RSS bounded")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def print_summary(r: dict) -> None:
    kinds = ", ".join(f"{k} {r['by_kind'].get(k, 0)}" for k in KINDS)
    lines = [
        ("submitted", f"{r['submitted']} ({kinds})"),
        ("done", f"{r['done']} (SUCCESSFUL {r['successful']}, FAILED {r['failed']}, CANCELLED {r['cancelled']})"),
        ("lost", r["lost"]),
        ("wrong status", r["wrong"]),
        ("out of attempts", f"{r['exhausted_by_kills']} (every attempt ended by the soak's kills: FAILED is right)"),
        ("worker kills / HUPs", f"{r['kills']} / {r['hups']}"),
        ("runs", f"{r['runs']}, duplicated {r['duplicated_runs']}, beyond attempts {r['runs_beyond_attempts']}, "
                 f"after final {r['runs_after_final']}, SUCCESSFUL never run {r['successful_not_run']}"),
        ("fast latency", f"p50 {r['fast_latency_p50_ms']} ms, p99 {r['fast_latency_p99_ms']} ms, "
                         f"max {r['fast_latency_max_ms']} ms"),
        ("supervisor RSS", f"{r['supervisor_rss_start_mib']} MiB after warm-up, {r['supervisor_rss_end_mib']} MiB at end "
                           f"(max {r['supervisor_rss_max_mib']}, growth {r['supervisor_rss_growth_mib']}, "
                           f"bound {r['rss_bound_mib']:g})"),
        ("with children", f"{r['total_rss_start_mib']} MiB -> {r['total_rss_end_mib']} MiB"),
        ("drain", f"{r['drain_seconds']} s after the load; {r['seconds']} s in all"),
        ("counters", ", ".join(f"{k} {v}" for k, v in sorted(r["counters"].items()))),
    ]
    if r["error"]:
        lines.append(("error", r["error"]))
    if r["log_problem_count"]:
        lines.append(("supervisor log", f"{r['log_problem_count']} ERROR/CRITICAL/Traceback lines, first: "
                                        f"{r['log_problems'][0]}"))
    for problem in r["problems"]:
        lines.append(("problem", json.dumps(problem)))
    for name, value in lines:
        print(f"{name:>20}: {value}")


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except KeyboardInterrupt:  # the supervisor and its children were stopped on the way out
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
