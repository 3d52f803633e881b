"""Standalone demo: start a supervisor, submit tasks, watch their live status.

Run through ./scripts/demo (which makes the virtualenv). With --keep the supervisor
keeps running after the batch until Ctrl-C; either way it is stopped cleanly.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import taskpool  # noqa: E402
from taskpool.protocol import FINAL_STATUSES  # noqa: E402


def start_supervisor(spool: Path, workers: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    env.pop("DJANGO_SETTINGS_MODULE", None)  # a plain supervisor with the sqlite store
    cmd = [sys.executable, "-m", "taskpool", "--workers", str(workers), "--spool", str(spool), "--import", "demo_tasks"]
    print("$", " ".join(cmd[2:]).replace("-m taskpool", "taskpool-supervisor"), flush=True)
    return subprocess.Popen(cmd, env=env, start_new_session=True)


def wait_for_supervisor(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"supervisor exited with code {proc.returncode}")
        try:
            if any(w["state"] == "idle" for w in taskpool.stats()["workers"]):
                return
        except taskpool.SupervisorUnavailable:
            pass
        time.sleep(0.1)
    raise SystemExit("supervisor did not become ready")


def show(handles: dict[str, taskpool.TaskHandle]) -> bool:
    """Print one status line per task; True when all are final."""
    finished = True
    for label, handle in handles.items():
        info = handle.refresh()
        finished &= info.status in FINAL_STATUSES
        bar = ""
        if info.progress is not None:
            filled = int(info.progress / 5)
            bar = "[" + "#" * filled + "." * (20 - filled) + f"] {info.progress:5.1f}% {info.progress_message or ''}"
        detail = bar
        if info.status == "SUCCESSFUL":
            detail = f"-> {info.result}"
        elif info.status == "FAILED" and info.errors:
            detail = f"-> {info.errors[-1]['type']}: {info.errors[-1]['message']}"
        print(f"  {label:<14} {info.status:<10} attempts {info.attempts}  {detail}")
    return finished


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="keep the supervisor running until Ctrl-C")
    args = parser.parse_args()
    spool = Path(tempfile.mkdtemp(prefix="taskpool-demo-"))
    taskpool.configure(spool=str(spool))
    proc = start_supervisor(spool, args.workers)
    try:
        wait_for_supervisor(proc)
        import demo_tasks

        handles = {f"report {i}": demo_tasks.build_report.submit(i, pages=8 + i) for i in range(1, 4)}
        handles["urgent report"] = demo_tasks.build_report.using(priority=50).submit(99, pages=5)
        handles["flaky import"] = demo_tasks.flaky_import.submit(1000)
        handles["crash & retry"] = demo_tasks.crashes_once.submit(str(spool / "crashed-once"))
        deadline = time.monotonic() + 120
        while True:
            print(f"\n-- {time.strftime('%H:%M:%S')}")
            if show(handles) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        print()
        subprocess.run([sys.executable, "-m", "taskpool", "status", "--spool", str(spool)], check=False)
        if args.keep:
            print(f"\nsupervisor pid {proc.pid} keeps running on {spool}; Ctrl-C stops it")
            proc.wait()
    except KeyboardInterrupt:
        print("\nstopping")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    print(f"supervisor stopped with code {proc.returncode}")
    return 0 if proc.returncode == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
