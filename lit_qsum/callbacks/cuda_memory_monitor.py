"""Watch GPU and host memory through long QLoRA runs on small cards: log it, find the peak, release the CUDA cache
when the card runs full, and summarise it all when fit ends."""

from typing import Any, Literal

import lightning.pytorch as L
import psutil
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from lightning.pytorch.utilities.types import STEP_OUTPUT
from typing_extensions import override

from lit_qsum.callbacks.step_watch import OptimizerStepWatch, uses_cuda

_GIB = 1024**3


class CudaMemoryMonitor(Callback):
    """Log CUDA and host memory every N optimizer steps, track the peak and where it happened, and print a summary
    at the end of fit.

    Every N steps (``trainer.global_step % N == 0``) it logs ``mem/allocated_gib``, ``mem/reserved_gib``,
    ``mem/peak_allocated_gib``, ``mem/free_gib`` (the driver's free memory, after every process on the card),
    ``mem/peak_allocated_gib_max_rank`` and ``mem/host_rss_gib``. On a non-CUDA root device only
    ``mem/host_rss_gib`` is logged.

    The peak is read from the allocator's counters after every optimizer step and every validation run (host-side
    reads, no device sync), so the summary names the step whose forward/backward, or the validation run after it,
    set the peak.

    Values are written straight to the Trainer's loggers on measurement steps only, at the step Lightning uses for
    ``train/loss`` of the same batch; ``--trainer.log_every_n_steps`` does not apply.

    DDP/FSDP: every rank measures its own device. Loggers write on rank 0 only, so the ``mem/*`` values are rank 0's,
    except ``mem/peak_allocated_gib_max_rank``: the largest peak over ranks (one all-reduce of a scalar every N
    steps), the number that says whether any card is close to OOM. Threshold cleanups are per rank. When fit ends,
    every rank's peak allocated and reserved memory are gathered (``peak_allocated_bytes_per_rank``,
    ``peak_reserved_bytes_per_rank``) and rank 0's summary lists them, GPU by GPU.

    Args:
        every_n_steps: Optimizer steps between measurements (and threshold checks).
        cleanup_threshold: Release the CUDA cache when allocated memory reaches this fraction (0-1) of ``threshold_of``.
        threshold_of: Denominator of the threshold: "total" device memory or "reserved" (PyTorch's cache).
        log_host_rss: Also log this process's resident host memory (``mem/host_rss_gib``).

    """

    def __init__(
        self,
        every_n_steps: int = 50,
        cleanup_threshold: float | None = None,
        threshold_of: Literal["reserved", "total"] = "total",
        log_host_rss: bool = True,
    ) -> None:
        if every_n_steps < 1:
            raise ValueError(f"CudaMemoryMonitor: every_n_steps must be >= 1, got {every_n_steps}")
        if cleanup_threshold is not None and not 0 < cleanup_threshold < 1:
            raise ValueError(f"CudaMemoryMonitor: cleanup_threshold must be in (0, 1) or None, got {cleanup_threshold}")
        if threshold_of not in ("reserved", "total"):
            raise ValueError(f"CudaMemoryMonitor: threshold_of must be 'reserved' or 'total', got {threshold_of!r}")
        self.every_n_steps = every_n_steps
        self.cleanup_threshold = cleanup_threshold
        self.threshold_of = threshold_of
        self.log_host_rss = log_host_rss

        self.peak_allocated_bytes = 0
        self.peak_step = -1
        self.peak_in_validation = False
        self.peak_reserved_bytes = 0
        self.peak_host_rss_bytes = 0
        self.cleanups = 0
        self.peak_allocated_bytes_per_rank: list[int] = []
        self.peak_reserved_bytes_per_rank: list[int] = []
        self._cuda = False
        self._said_cpu = False
        self._watch = OptimizerStepWatch()

    # the only torch.cuda / psutil reads; tests replace these to run the CUDA paths on CPU
    def _read_cuda_stats(self, device: torch.device) -> dict[str, int]:
        stats = torch.cuda.memory_stats(device)
        return {
            "allocated": stats.get("allocated_bytes.all.current", 0),
            "reserved": stats.get("reserved_bytes.all.current", 0),
            "peak_allocated": stats.get("allocated_bytes.all.peak", 0),
            "peak_reserved": stats.get("reserved_bytes.all.peak", 0),
        }

    def _read_cuda_free(self, device: torch.device) -> tuple[int, int]:
        return torch.cuda.mem_get_info(device)

    def _read_host_rss(self) -> int:
        return psutil.Process().memory_info().rss

    def _update_peaks(self, stats: dict[str, int], step: int, in_validation: bool) -> None:
        # the allocator's peak only grows within a process, so the first read that shows a new high names the step;
        # after a resume the restored peak stays until this process beats it
        if stats["peak_allocated"] > self.peak_allocated_bytes:
            self.peak_allocated_bytes = stats["peak_allocated"]
            self.peak_step = step
            self.peak_in_validation = in_validation
        self.peak_reserved_bytes = max(self.peak_reserved_bytes, stats["peak_reserved"])

    @override
    def setup(self, trainer: "L.Trainer", pl_module: "L.LightningModule", stage: str) -> None:
        self._cuda = uses_cuda(trainer)
        if not self._cuda and not self._said_cpu:
            what = "logging host RSS only" if self.log_host_rss else "nothing to log"
            rank_zero_info(f"CudaMemoryMonitor: root device is {trainer.strategy.root_device}, not CUDA; {what}.")
            self._said_cpu = True

    @override
    def on_train_start(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        self._watch.start(trainer)

    @override
    def on_train_batch_end(
        self, trainer: "L.Trainer", pl_module: "L.LightningModule", outputs: STEP_OUTPUT, batch: Any, batch_idx: int
    ) -> None:
        if not self._watch.steps_since_last(trainer):  # gradient accumulation: the optimizer has not stepped yet
            return
        step = trainer.global_step
        device = trainer.strategy.root_device
        stats = self._read_cuda_stats(device) if self._cuda else None
        if stats is not None:
            self._update_peaks(stats, step, in_validation=False)
        if step % self.every_n_steps != 0:
            return

        metrics: dict[str, float] = {}
        if stats is not None:
            free, total = self._read_cuda_free(device)
            peak = torch.tensor(self.peak_allocated_bytes, dtype=torch.float64, device=device)
            peak_all_ranks = float(trainer.strategy.reduce(peak, reduce_op="max"))
            metrics["mem/allocated_gib"] = stats["allocated"] / _GIB
            metrics["mem/reserved_gib"] = stats["reserved"] / _GIB
            metrics["mem/peak_allocated_gib"] = self.peak_allocated_bytes / _GIB
            metrics["mem/peak_allocated_gib_max_rank"] = peak_all_ranks / _GIB
            metrics["mem/free_gib"] = free / _GIB
        if self.log_host_rss:
            rss = self._read_host_rss()
            self.peak_host_rss_bytes = max(self.peak_host_rss_bytes, rss)
            metrics["mem/host_rss_gib"] = rss / _GIB
        _log_metrics(trainer, metrics)
        if stats is not None:
            self._maybe_cleanup(stats["allocated"], stats["reserved"] if self.threshold_of == "reserved" else total)

    def _maybe_cleanup(self, allocated: int, denominator: int) -> None:
        if self.cleanup_threshold is None or denominator <= 0:
            return
        if allocated / denominator >= self.cleanup_threshold:
            torch.cuda.empty_cache()
            self.cleanups += 1

    @override
    def on_validation_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        # generation can set the peak; it is charged to the last optimizer step (0 for the sanity check)
        if self._cuda:
            stats = self._read_cuda_stats(trainer.strategy.root_device)
            self._update_peaks(stats, trainer.global_step, in_validation=True)

    @override
    def on_fit_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        if self.log_host_rss:  # one more sample, so runs shorter than every_n_steps still report a figure
            self.peak_host_rss_bytes = max(self.peak_host_rss_bytes, self._read_host_rss())
        if self._cuda:
            mine = torch.tensor([self.peak_allocated_bytes, self.peak_reserved_bytes], device=trainer.strategy.root_device)
            every = trainer.strategy.all_gather(mine).reshape(-1, 2).tolist()  # one row per rank
            self.peak_allocated_bytes_per_rank = [int(row[0]) for row in every]
            self.peak_reserved_bytes_per_rank = [int(row[1]) for row in every]
        rank_zero_info(self._summary(trainer))

    def _summary(self, trainer: "L.Trainer") -> str:
        rows: list[tuple[str, str]] = []
        if self._cuda:
            where = f"step {self.peak_step}" + (" (validation)" if self.peak_in_validation else "")
            rows.append(("peak allocated", f"{self.peak_allocated_bytes / _GIB:.2f} GiB at {where}"))
            rows.append(("peak reserved", f"{self.peak_reserved_bytes / _GIB:.2f} GiB"))
            if len(self.peak_allocated_bytes_per_rank) > 1:
                per_rank = zip(self.peak_allocated_bytes_per_rank, self.peak_reserved_bytes_per_rank)
                rows += [
                    (f"rank {r} peak", f"{alloc / _GIB:.2f} GiB allocated, {reserved / _GIB:.2f} GiB reserved")
                    for r, (alloc, reserved) in enumerate(per_rank)
                ]
            rows.append(("cache cleanups", str(self.cleanups)))
        if self.log_host_rss:
            rss = f"{self.peak_host_rss_bytes / _GIB:.2f} GiB (sampled every {self.every_n_steps} steps and at the end)"
            rows.append(("peak host RSS", rss))
        rows.append(("OOM recoveries", str(_oom_recoveries(trainer))))
        scope = " (rank 0)" if trainer.world_size > 1 else ""
        width = max(len(name) for name, _ in rows)
        lines = [f"CudaMemoryMonitor summary{scope}:"] + [f"  {name:<{width}}  {value}" for name, value in rows]
        return "\n".join(lines)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "peak_allocated_bytes": self.peak_allocated_bytes,
            "peak_step": self.peak_step,
            "peak_in_validation": self.peak_in_validation,
            "peak_reserved_bytes": self.peak_reserved_bytes,
            "peak_host_rss_bytes": self.peak_host_rss_bytes,
            "cleanups": self.cleanups,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.peak_allocated_bytes = state_dict.get("peak_allocated_bytes", 0)
        self.peak_step = state_dict.get("peak_step", -1)
        self.peak_in_validation = state_dict.get("peak_in_validation", False)
        self.peak_reserved_bytes = state_dict.get("peak_reserved_bytes", 0)
        self.peak_host_rss_bytes = state_dict.get("peak_host_rss_bytes", 0)
        self.cleanups = state_dict.get("cleanups", 0)


def _log_metrics(trainer: "L.Trainer", metrics: dict[str, float]) -> None:
    # Written to the loggers directly, as Lightning's DeviceStatsMonitor and LearningRateMonitor do: a value given to
    # `pl_module.log(on_step=True)` is re-written on every later logging step until logged again, which would draw
    # stale memory readings as flat lines between measurements. The step is the one Lightning gives values logged
    # during this batch (its loop's `_batches_that_stepped`, one less than global_step after the optimizer stepped).
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=trainer.global_step - 1)


def _oom_recoveries(trainer: "L.Trainer") -> int:
    # whichever OOM-handling callback is present (e.g. an OOMBatchSizeScaler) exposes `recoveries`; else the module
    for callback in trainer.callbacks:
        if isinstance(getattr(callback, "recoveries", None), int):
            return callback.recoveries
    return int(getattr(trainer.lightning_module, "oom_recoveries", 0))
