"""scripts/bench --quick runs every runner and produces a well-formed table and JSON (no timing
is asserted: the figures depend on the machine and its load)."""

from __future__ import annotations

import json
import subprocess
import sys

from helpers import ROOT

RUNNERS = {"multiprocessing.Pool", "ProcessPoolExecutor", "taskpool (memory)", "taskpool (sqlite)", "taskpool (django)",
           "taskpool (memory, prefetch 0)", "taskpool (sqlite, prefetch 0)"}
KEYS = {"w1_tasks_per_s", "w1_single_tasks_per_s", "w2_p50_us", "w2_p99_us", "w3_p50_us", "w3_p99_us", "w4_efficiency"}
TASKPOOL_KEYS = {"idle_rss_mib", "backlog_rss_mib", "idle_pss_mib", "backlog_pss_mib", "start_rss_mib", "backlog_ready"}


def test_quick_bench_produces_every_figure_for_every_runner(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--quick", "--json", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    medians = report["medians"]
    assert set(medians) == RUNNERS
    for name, figures in medians.items():
        wanted = KEYS | (TASKPOOL_KEYS if name.startswith("taskpool") else set())
        assert set(figures) >= wanted, name
        assert all(figures[k] > 0 for k in wanted), (name, figures)
        if name.startswith("taskpool"):
            assert "backlog_rss_growth_mib" in figures, name  # may be <= 0 on a noisy machine
            assert figures["backlog_ready"] >= 0.9 * report["sizes"]["backlog"], name
    assert set(report["ratios_to_pool"]) == RUNNERS
    targets = report["targets"]
    assert targets and all(t["met"] in (True, False) for t in targets), targets  # every runner ran: all judged
    assert {t["runner"] for t in targets} <= RUNNERS
    assert "ratio to Pool" in proc.stdout and "targets (issue 5)" in proc.stdout
    floor = report["floor"]
    assert floor["floor_rtt_2proc_us"] > 0 and floor["floor_rtt_3proc_us"] > 0, floor
    assert "floor (this machine, this run)" in proc.stdout
