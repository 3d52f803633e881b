"""The README's main command runs scripts/demo.py; check it end to end."""

from __future__ import annotations

import subprocess
import sys

from helpers import ROOT


def test_standalone_demo_runs_every_task_to_a_final_status():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo.py")],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    last_round = proc.stdout.split("\n-- ")[-1]
    assert last_round.count("SUCCESSFUL") == 5
    assert "builtins.ValueError: row 500 has no customer id" in last_round
    assert "recovered after a worker crash" in last_round
    assert "supervisor stopped with code 0" in proc.stdout
