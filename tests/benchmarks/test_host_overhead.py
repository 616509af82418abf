"""``benchmarks/host_overhead.py`` runs end to end and prints both per-step times."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_host_overhead_prints_both_step_times() -> None:
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "host_overhead.py")], cwd=REPO, text=True,
                          capture_output=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    found = re.search(r"lit-qsum step ([\d.]+) ms, plain loop step ([\d.]+) ms, difference (-?[\d.]+) ms", done.stdout)
    assert found, done.stdout[-2000:]
    lit, plain, diff = (float(v) for v in found.groups())
    assert lit > 0 and plain > 0 and abs(lit - plain - diff) < 0.11
