"""Fit the conftest model under 2-process CPU DDP (gloo, forked) with both monitors; CUDA memory is faked per rank.

Run by test_callbacks_ddp.py in a fresh interpreter: ``python ddp_cpu_fit.py OUT_DIR``. Each rank writes
OUT_DIR/rank{N}.json; rank 0's CSVLogger writes OUT_DIR/logs.
"""

import json
import sys
from pathlib import Path

import lightning.pytorch as L
import torch
import torch.distributed as dist
from lightning.pytorch.loggers import CSVLogger

from conftest import DictBoringModel
from lit_qsum.callbacks import CudaMemoryMonitor, SummarizationThroughput

GIB = 1024**3


def fake_stats(self: CudaMemoryMonitor, device: torch.device) -> dict[str, int]:
    peak = (1 + dist.get_rank()) * GIB  # rank 1 peaks higher than rank 0
    return {"allocated": GIB, "reserved": 2 * GIB, "peak_allocated": peak, "peak_reserved": 3 * GIB}


class Report(L.Callback):
    def __init__(self, out: Path) -> None:
        self.out = out

    def on_fit_end(self, trainer: L.Trainer, pl_module: DictBoringModel) -> None:
        throughput = next(c for c in trainer.callbacks if isinstance(c, SummarizationThroughput))
        memory = next(c for c in trainer.callbacks if isinstance(c, CudaMemoryMonitor))
        report = {
            "seen_tokens": pl_module.seen_tokens,
            "total_tokens": throughput.total_tokens,
            "total_samples": throughput.total_samples,
            "peak_allocated_bytes": memory.peak_allocated_bytes,
            "peak_allocated_bytes_per_rank": memory.peak_allocated_bytes_per_rank,
        }
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    out = Path(sys.argv[1])
    sys.modules[CudaMemoryMonitor.__module__].uses_cuda = lambda trainer: True
    CudaMemoryMonitor._read_cuda_stats = fake_stats
    CudaMemoryMonitor._read_cuda_free = lambda self, device: (5 * GIB, 10 * GIB)
    trainer = L.Trainer(
        strategy="ddp_fork",
        accelerator="cpu",
        devices=2,
        max_steps=10,
        limit_val_batches=2,
        logger=CSVLogger(out, name="logs"),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=[SummarizationThroughput(window=5), CudaMemoryMonitor(every_n_steps=5), Report(out)],
    )
    trainer.fit(DictBoringModel())
