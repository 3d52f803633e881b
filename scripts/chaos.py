"""Chaos check: submit thousands of tasks while killing workers, the recorder and the
whole supervisor (SIGKILL), restarting it, then verify that nothing was lost.

Checks: every submitted task has a row with exactly one final status; the status is
the one its body chose (SUCCESSFUL, or FAILED for the ones told to fail); every
SUCCESSFUL task's body ran at least once; no body ran after its task's final status
was recorded. Prints the figures (and --json writes them); exits 1 on any loss.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import chaos_tasks  # noqa: E402

from taskpool.client import Client, submit_many  # noqa: E402
from taskpool.errors import SupervisorUnavailable  # noqa: E402
from taskpool.protocol import FINAL_STATUSES, StatsRequest  # noqa: E402
from taskpool.stores import open_store  # noqa: E402


class Supervisor:
    def __init__(self, spool: Path, workers: int, log: Path) -> None:
        self.spool, self.workers, self.log = spool, workers, log
        self.proc: subprocess.Popen | None = None
        self.client = Client(str(spool / "taskpool.sock"), timeout=5.0)
        self.starts = 0

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
        env.pop("DJANGO_SETTINGS_MODULE", None)  # a plain supervisor with the sqlite store
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "taskpool", "--spool", str(self.spool), "--workers", str(self.workers),
                 "--import", "chaos_tasks", "--graceful-timeout", "5"],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        self.starts += 1

    def stats(self) -> dict | None:
        try:
            return self.client.request(StatsRequest()).data
        except (SupervisorUnavailable, OSError):
            return None

    def kill_all(self) -> None:
        """SIGKILL the supervisor and every process in its session, as a crash would."""
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill_all()


def produce(total: int, batch: int, sup: Supervisor, store, log_path: str, fail_every: int, ids: list) -> None:
    """Submit ``total`` tasks in batches, whether or not a supervisor is up."""
    for start in range(0, total, batch):
        calls = [(chaos_tasks.work, (i, log_path, i % fail_every == 0)) for i in range(start, min(total, start + batch))]
        handles = submit_many(calls, client=sup.client, store=store)
        ids.extend((h.id, i) for h, i in zip(handles, range(start, start + len(calls)), strict=True))
        time.sleep(0.01)


def chaos(sup: Supervisor, kills: int, rng: random.Random, figures: Counter, stop: threading.Event) -> None:
    for _ in range(kills):
        if stop.wait(rng.uniform(0.4, 1.5)):
            return
        data = sup.stats()
        choice = rng.random()
        if data and choice < 0.55 and data["workers"]:
            victim = rng.choice(data["workers"])["pid"]
            _kill(victim)
            figures["worker_kills"] += 1
        elif data and choice < 0.7 and data.get("recorder") and data["recorder"]["pid"]:
            _kill(data["recorder"]["pid"])
            figures["recorder_kills"] += 1
        else:
            sup.kill_all()
            figures["supervisor_kills"] += 1
            time.sleep(rng.uniform(0.1, 0.5))
            sup.start()


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def verify(store, ids: list, log_path: Path, fail_every: int) -> dict:
    runs: dict[int, list[float]] = {}
    if log_path.exists():
        for line in log_path.read_text().split("\n"):
            if line:
                token, started = line.split()
                runs.setdefault(int(token), []).append(float(started))
    lost = wrong = not_run = after_final = 0
    for task_id, token in ids:
        row = store.fetch(task_id)
        if row is None or row.status not in FINAL_STATUSES:
            lost += 1
            continue
        expected = "FAILED" if token % fail_every == 0 else "SUCCESSFUL"
        wrong += row.status != expected
        if row.status == "SUCCESSFUL" and not runs.get(token):
            not_run += 1
        after_final += sum(1 for t in runs.get(token, []) if row.finished_at and t > row.finished_at + 0.001)
    return {
        "tasks": len(ids),
        "lost": lost,
        "wrong_status": wrong,
        "successful_not_run": not_run,
        "runs_after_final": after_final,
        "body_runs": sum(len(v) for v in runs.values()),
        "duplicated_runs": sum(len(v) - 1 for v in runs.values() if len(v) > 1),
    }


def main() -> int:
    logging.getLogger("taskpool.client").setLevel(logging.ERROR)  # "stored, will run later" is expected here
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--kills", type=int, default=12, help="random kills during the run")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--deadline", type=float, default=300.0, help="seconds to wait for every task to finish")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    fail_every = 10
    work = Path(tempfile.mkdtemp(prefix="taskpool-chaos-"))
    spool, log_path = work / "spool", work / "runs.log"
    store = open_store("sqlite", str(spool))
    sup = Supervisor(spool, args.workers, work / "supervisor.log")
    figures: Counter = Counter(worker_kills=0, recorder_kills=0, supervisor_kills=0)
    ids: list = []
    began = time.monotonic()
    sup.start()
    stop = threading.Event()
    killer = threading.Thread(target=chaos, args=(sup, args.kills, rng, figures, stop))
    killer.start()
    try:
        produce(args.tasks, 50, sup, store, str(log_path), fail_every, ids)
        killer.join()
        if sup.proc is None or sup.proc.poll() is not None:
            sup.start()
        restarted = time.monotonic()
        deadline = restarted + args.deadline
        while time.monotonic() < deadline:
            counts = store.counts()
            if sum(counts.get(s, 0) for s in FINAL_STATUSES) >= len(ids):
                break
            time.sleep(0.2)
        drained = time.monotonic()
    finally:
        stop.set()
        killer.join()
        sup.stop()
    result = verify(store, ids, log_path, fail_every)
    result.update(
        seed=seed, workers=args.workers, supervisor_starts=sup.starts, **figures,
        seconds=round(drained - began, 1), drain_after_last_kill=round(drained - restarted, 1), spool=str(spool),
    )
    for key, value in result.items():
        print(f"{key:>24}: {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    ok = result["lost"] == 0 and result["wrong_status"] == 0 and result["successful_not_run"] == 0
    ok = ok and result["runs_after_final"] == 0
    print("OK: nothing lost" if ok else f"FAILED: see the figures above; the run is kept in {work}")
    if ok:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
