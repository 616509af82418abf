"""Where a training step's peak GPU memory goes: a callback that records one optimizer step with torch's CUDA memory
history and a summary of what was live at the step's peak, grouped by the code that allocated it.

  --trainer.callbacks+ '{"class_path": "benchmarks.memory_snapshot.MemorySnapshot",
                         "init_args": {"out": "/tmp/snap.json", "step": 4}}'

``benchmarks/multi_gpu.py --snapshot-step N`` adds it to the FSDP run and to the one-GPU run of the same shape, so
the two peaks can be compared allocation by allocation (issue #14: FSDP's step adds more memory than one GPU's).

The summary: ``baseline_bytes`` (allocated when the step began: weights, optimizer state, saved gradients),
``peak_bytes`` (``torch.cuda.max_memory_allocated`` over the step), and ``at_peak``: the allocations made during the
step and still live at its highest point, summed by the innermost frame in lit-qsum, transformers, peft,
bitsandbytes, FSDP or checkpointing code (``site``), largest first.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

# the code an allocation is charged to: the innermost frame in one of these
INTERESTING = ("lit_qsum/", "transformers/", "peft/", "bitsandbytes/", "torch/distributed/fsdp/",
               "torch/utils/checkpoint", "torch/optim/", "lightning/")


class MemorySnapshot(Callback):
    """Records optimizer step ``step`` (the batches from its start to the first batch end after it) and writes the
    summary to ``out`` (``-rank<r>`` added before the suffix on ranks other than 0). CUDA only; a no-op elsewhere."""

    def __init__(self, out: str, step: int = 4, max_entries: int = 500_000) -> None:
        self.out = Path(out)
        self.step = step
        self.max_entries = max_entries
        self._baseline: int | None = None
        self._done = False
        # the run's peak before this callback resets the counter for its step: a run's peak is the larger of this and
        # the counter at its end (benchmarks/multi_gpu.py). Without it, a one-GPU run whose later steps are CUDA-graph
        # replays (which allocate nothing) reported its step-4 baseline as its peak (session 8, 2.83 GiB for t5-xl)
        self.peak_before_reset = 0

    @override
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        if self._done or self._baseline is not None or trainer.global_step != self.step:
            return
        if pl_module.device.type != "cuda":
            return
        torch.cuda.synchronize()
        self.peak_before_reset = torch.cuda.max_memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        self._baseline = torch.cuda.memory_allocated()
        torch.cuda.memory._record_memory_history(max_entries=self.max_entries)

    @override
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._baseline is None or self._done or trainer.global_step <= self.step:
            return  # not recording, or gradient accumulation: the step is still open
        torch.cuda.synchronize()
        snapshot = torch.cuda.memory._snapshot()
        torch.cuda.memory._record_memory_history(enabled=None)
        summary = summarize(snapshot, self._baseline, torch.cuda.max_memory_allocated(),
                            device=torch.cuda.current_device())
        summary["step"] = self.step
        out = self.out if trainer.global_rank == 0 else self.out.with_name(
            f"{self.out.stem}-rank{trainer.global_rank}{self.out.suffix}")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(summary, indent=1))
        self._done = True


def site(frames: list[dict[str, Any]]) -> str:
    """``file:line function`` of the innermost interesting frame (frames are innermost first), or the innermost."""
    for frame in frames:
        name = frame.get("filename", "")
        for marker in INTERESTING:
            at = name.find(marker)
            if at >= 0:
                return f"{name[at:]}:{frame.get('line')} {frame.get('name')}"
    if frames:
        return f"{frames[0].get('filename', '?')}:{frames[0].get('line')} {frames[0].get('name')}"
    return "(no stack)"


def summarize(snapshot: dict[str, Any], baseline: int, peak: int, device: int = 0, top: int = 15) -> dict[str, Any]:
    """Replay the recorded allocation events of ``device``: the allocations live at the highest point, by site."""
    traces = snapshot.get("device_traces") or []
    events = traces[device] if device < len(traces) else []
    live: dict[int, tuple[int, str]] = {}
    total = best = 0
    best_live: dict[int, tuple[int, str]] = {}
    for event in events:
        action, addr, size = event.get("action"), event.get("addr"), int(event.get("size", 0))
        if action == "alloc":
            live[addr] = (size, site(event.get("frames") or []))
            total += size
            if total > best:
                best, best_live = total, dict(live)
        elif action in ("free_completed", "free_requested") and addr in live:
            if action == "free_requested":
                continue  # counted when the free completes, as the allocator does
            total -= live.pop(addr)[0]
    by_site: dict[str, int] = defaultdict(int)
    for size, where in best_live.values():
        by_site[where] += size
    ranked = sorted(by_site.items(), key=lambda item: -item[1])
    return {
        "baseline_bytes": baseline,
        "peak_bytes": peak,
        "step_peak_bytes": best,  # allocated during the step and live at its highest point
        "events": len(events),
        "at_peak": [{"site": where, "bytes": size} for where, size in ranked[:top]],
        "at_peak_other_bytes": sum(size for _, size in ranked[top:]),
    }
