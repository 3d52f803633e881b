"""scripts/bench --quick runs and produces a well-formed table (no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

from helpers import ROOT

KEYS = {"w1_tasks_per_s", "w2_p50_us", "w2_p99_us", "w3_p50_us", "w3_p99_us", "w4_efficiency"}


def test_quick_bench_produces_every_figure_for_every_runner(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--quick", "--json", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    medians = json.loads(out.read_text())["medians"]
    assert set(medians) == {"multiprocessing.Pool", "ProcessPoolExecutor", "taskpool (memory)", "taskpool (sqlite)"}
    for name, figures in medians.items():
        assert set(figures) >= KEYS, name
        assert all(figures[k] > 0 for k in KEYS), (name, figures)
    assert medians["taskpool (memory)"]["idle_rss_mib"] > 0
    assert "ratio to Pool" in proc.stdout
