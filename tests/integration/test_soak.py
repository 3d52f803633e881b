"""A short run of scripts/soak: a steady mixed workload with worker SIGKILLs and HUPs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import psutil
from helpers import ROOT, pid_gone, wait_until


def _gone(pid: int, created: float) -> bool:
    """The process is gone (or a zombie), or its pid now belongs to another process."""
    try:
        return pid_gone(pid) or psutil.Process(pid).create_time() != created
    except psutil.NoSuchProcess:
        return True


def test_short_soak_loses_nothing_and_stays_bounded(tmp_path):
    out = tmp_path / "soak.json"
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "soak.py"), "--duration", "8", "--workers", "2", "--seed", "5",
         "--rate", "15", "--kill-every", "2", "--hup-every", "2", "--warmup", "2", "--drain-timeout", "60",
         "--json", str(out)],
        capture_output=True, text=True, timeout=150, cwd=ROOT, env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    figures = json.loads(out.read_text())
    assert figures["submitted"] >= 100  # 15 tasks/s for 8 s
    assert figures["done"] == figures["submitted"]
    assert figures["lost"] == 0
    assert figures["wrong"] == 0, figures["problems"]
    assert figures["runs_beyond_attempts"] == 0
    assert figures["runs_after_final"] == 0
    assert figures["successful_not_run"] == 0
    assert figures["log_problems"] == []
    assert figures["kills"] > 0
    assert figures["hups"] > 0
    too_slow = figures["by_kind"].get("too_slow", 0)  # one timeout each, unless the kills took every attempt
    assert too_slow - figures["exhausted_by_kills"] <= figures["counters"]["timeouts"] <= too_slow
    start, end = figures["supervisor_rss_start_mib"], figures["supervisor_rss_end_mib"]
    assert 0 < start < 200 and 0 < end < 200
    assert end - start <= figures["rss_bound_mib"] == 20
    assert figures["total_rss_end_mib"] >= end
    assert figures["fast_latency_p50_ms"] is not None
    assert figures["fast_latency_p50_ms"] <= figures["fast_latency_p99_ms"]
    assert len(figures["pids"]) > 3  # the supervisor, its recorder and several generations of workers
    for pid, created in figures["pids"]:
        wait_until(lambda pid=pid, created=created: _gone(pid, created), 10, f"process {pid} to be gone")
