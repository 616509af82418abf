"""Measure training speed in real (non-pad) tokens per second, the number that compares runs with different
batch sizes, padding and sequence lengths."""

import time
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from lightning.pytorch.utilities.types import STEP_OUTPUT
from typing_extensions import override

from lit_qsum.callbacks.step_watch import OptimizerStepWatch, uses_cuda
from lit_qsum.data.collate import count_tokens

# Why not Lightning's ThroughputMonitor: it can count non-pad tokens (`length_fn=lambda b: int(b["num_tokens"])`), so
# padding is not the problem. It does not fit because it calls torch.cuda.synchronize() after every train batch (and
# its totals go through Python comparisons, so a tensor count would sync each batch anyway), runs on rank 0 only and
# scales rank 0's counts by world size (length-grouped batches put different token counts on each rank), names its
# keys itself (`train/device/items_per_sec`, ...), logs through the private `trainer._logger_connector`, and warns
# unless the module defines `flops_per_batch`, which we do not measure for 4-bit models.


class SummarizationThroughput(Callback):
    """Log ``perf/tokens_per_s``, ``perf/samples_per_s`` and ``perf/step_time_s`` over windows of optimizer steps.

    Tokens are the batch's ``num_tokens`` (non-pad input tokens + non-ignored label tokens), or, when a batch lacks
    it, ``attention_mask.sum() + (labels != -100).sum()``; samples are ``input_ids.shape[0]``. Counts stay on the
    device and the clock is read after one ``torch.cuda.synchronize()`` per window, so there is no per-step sync.
    Windows end where ``trainer.global_step % window == 0`` and exclude validation; each window's rates are written
    to the Trainer's loggers once, at the step Lightning uses for ``train/loss`` of that batch
    (``--trainer.log_every_n_steps`` does not apply).

    DDP: token and sample counts are summed over ranks at each window end (one all-reduce of two scalars), so
    ``perf/tokens_per_s`` and ``perf/samples_per_s`` are whole-job rates, comparable with a single-GPU run; the
    clock and ``perf/step_time_s`` are rank 0's (ranks run in lockstep through the gradient all-reduce).

    Args:
        window: Optimizer steps per measurement window.

    """

    def __init__(self, window: int = 20) -> None:
        if window < 1:
            raise ValueError(f"SummarizationThroughput: window must be >= 1, got {window}")
        self.window = window
        self.total_tokens = 0
        self.total_samples = 0
        self.total_time = 0.0
        self._cuda = False
        self._reset_window()
        self._t0: float | None = None
        self._watch = OptimizerStepWatch()

    def _reset_window(self) -> None:
        self._tokens: torch.Tensor | None = None
        self._samples = 0
        self._steps = 0
        self._elapsed = 0.0

    def _synchronize(self) -> None:
        if self._cuda:
            torch.cuda.synchronize()

    @override
    def setup(self, trainer: "L.Trainer", pl_module: "L.LightningModule", stage: str) -> None:
        self._cuda = uses_cuda(trainer)

    @override
    def on_train_start(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        self._reset_window()
        self._t0 = None
        self._watch.start(trainer)

    @override
    def on_train_batch_start(
        self, trainer: "L.Trainer", pl_module: "L.LightningModule", batch: Any, batch_idx: int
    ) -> None:
        if self._t0 is None:  # first batch, or first after validation: the device is idle here
            self._t0 = time.perf_counter()

    @override
    def on_train_batch_end(
        self, trainer: "L.Trainer", pl_module: "L.LightningModule", outputs: STEP_OUTPUT, batch: Any, batch_idx: int
    ) -> None:
        tokens = _count_tokens(batch)
        self._tokens = tokens if self._tokens is None else self._tokens + tokens
        self._samples += batch["input_ids"].shape[0]
        stepped = self._watch.steps_since_last(trainer)
        if not stepped:  # gradient accumulation: the optimizer has not stepped yet
            return
        self._steps += stepped
        step = trainer.global_step
        if step % self.window == 0:
            tokens_per_s, samples_per_s, step_time_s = self._close_window(trainer)
            metrics = {
                "perf/tokens_per_s": tokens_per_s,
                "perf/samples_per_s": samples_per_s,
                "perf/step_time_s": step_time_s,
            }
            # straight to the loggers, like Lightning's DeviceStatsMonitor: `pl_module.log(on_step=True)` would re-write
            # this window's value on every logging step until the next window ends; the step is the one Lightning
            # gives `train/loss` of this batch (global_step - 1 once the optimizer has stepped)
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=step - 1)

    def _stop_clock(self) -> None:
        if self._t0 is not None:
            self._synchronize()
            self._elapsed += time.perf_counter() - self._t0
            self._t0 = None

    def _close_window(self, trainer: "L.Trainer") -> tuple[float, float, float]:
        self._stop_clock()
        self._t0 = time.perf_counter()
        assert self._tokens is not None
        counts = torch.stack([self._tokens.to(torch.long), torch.tensor(self._samples, device=self._tokens.device)])
        tokens, samples = (int(c) for c in trainer.strategy.reduce(counts, reduce_op="sum").tolist())
        elapsed, steps = self._elapsed, self._steps
        self.total_tokens += tokens
        self.total_samples += samples
        self.total_time += elapsed
        self._reset_window()
        elapsed = max(elapsed, 1e-9)
        return tokens / elapsed, samples / elapsed, elapsed / max(steps, 1)

    @override
    def on_validation_start(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        if not trainer.sanity_checking:
            self._stop_clock()

    @override
    def on_train_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        if self._tokens is not None:  # batches since the last window end count toward the totals
            self._close_window(trainer)
        self._t0 = None

    @override
    def on_fit_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        if self.total_time <= 0:
            return
        rank_zero_info(
            f"SummarizationThroughput: {self.total_tokens:,} tokens, {self.total_samples:,} samples in"
            f" {self.total_time:.1f} s of training: {self.total_tokens / self.total_time:,.0f} tokens/s,"
            f" {self.total_samples / self.total_time:.2f} samples/s"
            + (f" (all {trainer.world_size} ranks)" if trainer.world_size > 1 else "")
        )

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"total_tokens": self.total_tokens, "total_samples": self.total_samples, "total_time": self.total_time}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.total_tokens = state_dict.get("total_tokens", 0)
        self.total_samples = state_dict.get("total_samples", 0)
        self.total_time = state_dict.get("total_time", 0.0)


def _count_tokens(batch: Any) -> torch.Tensor:
    if not isinstance(batch, Mapping) or "input_ids" not in batch:
        raise ValueError("SummarizationThroughput needs dict batches with `input_ids`; got " + type(batch).__name__)
    if "num_tokens" in batch:
        return torch.as_tensor(batch["num_tokens"]).detach()
    if "attention_mask" not in batch:
        raise ValueError("SummarizationThroughput needs `num_tokens` or `attention_mask` in the batch")
    return count_tokens(batch).detach()
