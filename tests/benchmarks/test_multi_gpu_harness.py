"""benchmarks/multi_gpu.py's schedule: a short --deadline-s drops the last runs, never the first (DDP's pair)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks import multi_gpu  # noqa: E402


def test_the_first_runs_start_even_when_the_later_minimums_do_not_fit() -> None:
    # the plan's minimums (DDP 1, DDP 2, FSDP, one-GPU t5-xl) with 265 s left: the 2026-11-30 call skipped both DDP runs
    mins, timeouts = [60, 60, 120, 90], [150, 150, 200, 150]
    left, got = 265.0, []
    for i, (low, cap) in enumerate(zip(mins, timeouts)):
        timeout = multi_gpu.run_timeout(left, low, cap, mins[i + 1 :])
        got.append(timeout)
        if timeout is not None:
            left -= timeout  # each run uses its whole timeout: the worst case
    assert got == [60, 60, 120, None]


def test_a_run_is_cut_to_leave_later_minimums_but_never_below_its_own() -> None:
    assert multi_gpu.run_timeout(1000, 60, 150, [60, 120]) == 150  # room for everything: its own cap
    assert multi_gpu.run_timeout(300, 60, 150, [60, 120]) == 120  # 300 - 180: the later runs keep their minimums
    assert multi_gpu.run_timeout(200, 60, 150, [60, 120]) == 60  # its minimum, even if a later run won't fit
    assert multi_gpu.run_timeout(59, 60, 150, []) is None
