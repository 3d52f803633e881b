"""A short run of scripts/chaos: random SIGKILLs of workers, recorder and supervisor."""

from __future__ import annotations

import json
import subprocess
import sys

from helpers import ROOT


def test_short_chaos_run_loses_nothing(tmp_path):
    out = tmp_path / "chaos.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "chaos.py"), "--tasks", "400", "--kills", "5", "--seed", "3",
         "--deadline", "120", "--json", str(out)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    figures = json.loads(out.read_text())
    assert figures["tasks"] == 400
    assert figures["lost"] == 0
    assert figures["wrong_status"] == 0
    assert figures["successful_not_run"] == 0
    assert figures["runs_after_final"] == 0
    assert figures["worker_kills"] + figures["recorder_kills"] + figures["supervisor_kills"] == 5
    assert figures["body_runs"] >= 400 - 400 // 10  # every task but the failing tenth ran at least once
