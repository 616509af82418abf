"""benchmarks/grouping.py, the source of the README's non-pad-share figures: the real sampler and collator."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from grouping import measure  # noqa: E402


def test_grouping_by_target_pads_less_over_an_epoch_of_30_batches() -> None:
    rows = {r["setting"]: r for r in measure(micro_batch=16, batches=30, seed=0)}
    assert all(0 < r["non_pad_share"] <= 1 for r in rows.values())
    assert rows["group_by_target, pad 64"]["non_pad_share"] > rows["by total length, pad 64"]["non_pad_share"] + 0.05
    assert rows["group_by_target, pad 64, summaries 16"]["non_pad_share"] > rows["group_by_target, pad 64"]["non_pad_share"]
