"""The memory-snapshot summary: replaying allocation events finds what was live at the step's highest point."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.memory_snapshot import site, summarize  # noqa: E402


def _frames(*files: str) -> list[dict]:
    return [{"filename": f, "line": i + 1, "name": f"f{i}"} for i, f in enumerate(files)]


def test_the_allocations_live_at_the_highest_point_by_site() -> None:
    peft = _frames("/x/torch/nn/functional.py", "/site-packages/peft/tuners/lora/layer.py")
    fsdp = _frames("/x/torch/distributed/fsdp/_flat_param.py")
    events = [
        {"action": "alloc", "addr": 1, "size": 100, "frames": peft},
        {"action": "alloc", "addr": 2, "size": 300, "frames": fsdp},
        {"action": "free_requested", "addr": 1, "size": 100},
        {"action": "alloc", "addr": 3, "size": 50, "frames": peft},  # 450 live: the highest point
        {"action": "free_completed", "addr": 1, "size": 100},
        {"action": "free_completed", "addr": 2, "size": 300},
        {"action": "alloc", "addr": 4, "size": 200, "frames": fsdp},  # 250 live
    ]
    summary = summarize({"device_traces": [events]}, baseline=1000, peak=1450, top=1)
    assert summary["step_peak_bytes"] == 450 and summary["baseline_bytes"] == 1000 and summary["events"] == 7
    assert summary["at_peak"] == [{"site": "torch/distributed/fsdp/_flat_param.py:1 f0", "bytes": 300}]
    assert summary["at_peak_other_bytes"] == 150  # peft's two blocks, past the top 1


def test_an_allocation_is_charged_to_the_innermost_frame_of_interest() -> None:
    assert site(_frames("/a/torch/nn/modules/linear.py", "/b/lit_qsum/fastpath/lora_linear.py", "/c/peft/x.py")) == \
        "lit_qsum/fastpath/lora_linear.py:2 f1"
    assert site(_frames("/a/other.py")) == "/a/other.py:1 f0" and site([]) == "(no stack)"
