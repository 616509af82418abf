"""Release PyTorch's cached CUDA blocks on a schedule, so long runs on small cards leave room for non-PyTorch
allocations (cuBLAS workspaces, the desktop on a consumer GPU) and start each phase with an unfragmented cache."""

from typing import Any

import lightning.pytorch as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.memory import garbage_collection_cuda
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from lightning.pytorch.utilities.types import STEP_OUTPUT
from typing_extensions import override

from lit_qsum.callbacks.step_watch import OptimizerStepWatch, uses_cuda


class EmptyCudaCache(Callback):
    """Call ``torch.cuda.empty_cache()`` every N optimizer steps and once after every validation run.

    Validation generates summaries token by token, which leaves the cache full of odd-sized blocks that training
    cannot reuse; releasing them after validation is the call that matters most. Each rank releases its own device's
    cache; nothing is shared between ranks. On a non-CUDA root device the callback does nothing and says so once.

    Args:
        every_n_steps: Optimizer steps (``trainer.global_step``) between releases; 0 releases only after validation.
        gc_collect: Run ``gc.collect()`` first, so tensors held only by reference cycles are freed too (slower).

    """

    def __init__(self, every_n_steps: int = 50, gc_collect: bool = False) -> None:
        if every_n_steps < 0:
            raise ValueError(f"EmptyCudaCache: every_n_steps must be >= 0, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.gc_collect = gc_collect
        self.calls = 0
        self._active = False
        self._said_inert = False
        self._watch = OptimizerStepWatch()

    def _empty_cache(self) -> None:
        if self.gc_collect:
            garbage_collection_cuda()  # gc.collect() + empty_cache(), tolerating an OOM inside empty_cache
        else:
            torch.cuda.empty_cache()
        self.calls += 1

    @override
    def setup(self, trainer: "L.Trainer", pl_module: "L.LightningModule", stage: str) -> None:
        self._active = uses_cuda(trainer)
        if not self._active and not self._said_inert:
            rank_zero_info(
                f"EmptyCudaCache: root device is {trainer.strategy.root_device}, not CUDA; the callback does nothing."
            )
            self._said_inert = True

    @override
    def on_train_start(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        self._watch.start(trainer)

    @override
    def on_train_batch_end(
        self, trainer: "L.Trainer", pl_module: "L.LightningModule", outputs: STEP_OUTPUT, batch: Any, batch_idx: int
    ) -> None:
        # under gradient accumulation several batches end on the same global_step; release once per optimizer step
        if not self._watch.steps_since_last(trainer) or not self._active or self.every_n_steps == 0:
            return
        if trainer.global_step % self.every_n_steps == 0:
            self._empty_cache()

    @override
    def on_validation_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        if self._active:
            self._empty_cache()
