"""benchmarks/multi_gpu.py: its schedule (a short --deadline-s drops the last runs, never the first: DDP's pair) and its
steady tokens/s (the timed steps in which no rank captured a CUDA graph)."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

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


class _Event:
    """A CUDA event's stand-in: recorded at a time in ms."""

    def __init__(self, ms: float) -> None:
        self.ms = ms

    def elapsed_time(self, other: _Event) -> float:
        return other.ms - self.ms


def test_steady_tokens_per_s_leaves_out_the_steps_any_rank_captured_a_graph_in() -> None:
    recorder = multi_gpu.BenchRecorder("unused.json", warmup_steps=2)
    # this rank: 4 timed steps of 100 tokens; the other rank (doubling the sums) captured in step 2; the step took 1 s
    recorder._step_tokens = [torch.tensor(100)] * 4
    recorder._step_captured = [False, False, False, False]
    recorder._events = [_Event(ms) for ms in (0, 100, 1100, 1200, 1300)]
    other_rank = {0: [100.0] * 4, 1: [0.0, 1.0, 0.0, 0.0]}
    calls = []

    def reduce(tensor: torch.Tensor, reduce_op: str) -> torch.Tensor:
        assert reduce_op == "sum"
        calls.append(tensor)
        return tensor + torch.tensor(other_rank[len(calls) - 1], dtype=tensor.dtype)

    trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cpu"), reduce=reduce))
    steady = recorder._steady(trainer)
    assert steady["timed_steps_with_a_capture"] == 1 and steady["steady_steps"] == 3
    assert steady["steady_tokens_per_s"] == pytest.approx(3 * 200 / 0.3)  # both ranks' tokens over steps 1, 3, 4


def test_without_cuda_events_the_steady_figure_is_left_empty() -> None:
    recorder = multi_gpu.BenchRecorder("unused.json", warmup_steps=2)
    recorder._step_tokens, recorder._step_captured = [torch.tensor(7)] * 3, [False] * 3
    trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cpu"), reduce=lambda t, reduce_op: t))
    assert recorder._steady(trainer) == {"timed_steps_with_a_capture": 0, "steady_tokens_per_s": None, "steady_steps": None}
