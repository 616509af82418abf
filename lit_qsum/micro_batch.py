"""The micro-batch sizes OOM recovery changes, and the protocol of the callbacks that change them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import lightning.pytorch as L


@dataclass
class MicroBatchState:
    """How training steps are cut into micro-batches: owned by the module's ``StepEngine``, changed by ``OOMHandler``s.

    Args:
        accumulate_grad_batches: Micro-batches per optimizer step.
        micro_batch_size: Largest training chunk that fits; None = whole loader batches.
        eval_micro_batch_size: The same for validation/test/predict batches.
        pending_micro_batch_size: DDP: the micro-batch this rank fell back to after an OOM, adopted by every rank at
            the next optimizer step (0 = this rank can't go lower).
        micro_batches_done: Micro-batches counted in the open optimizer step.

    """

    accumulate_grad_batches: int = 1
    micro_batch_size: int | None = None
    eval_micro_batch_size: int | None = None
    pending_micro_batch_size: int | None = None
    micro_batches_done: int = 0

    def chunk_limit(self) -> int | None:
        """The largest training chunk to run now: the smaller of the size in force and this rank's pending one."""
        limits = [x for x in (self.micro_batch_size, self.pending_micro_batch_size) if x is not None]
        return min(limits) if limits else None


@runtime_checkable
class OOMHandler(Protocol):
    """A callback that lets ``SummarizationModule`` recover from CUDA out-of-memory errors (``OOMBatchSizeScaler``).

    The module catches the OOM, rolls back what the failed attempt changed, calls one of these with its
    ``pl_module.engine.micro_batch`` (a ``MicroBatchState``) to change, and retries. Each method raises
    ``UserInputError`` when no smaller size is allowed.
    """

    def handle_train_oom(
        self, trainer: L.Trainer, pl_module: L.LightningModule, failed_size: int, error: BaseException
    ) -> None:
        """A training chunk of ``failed_size`` samples ran out of memory: set the sizes for the retry."""

    def adopt_micro_batch(self, trainer: L.Trainer, pl_module: L.LightningModule, size: int) -> None:
        """DDP: at an optimizer step, every rank adopts ``size``, the smallest micro-batch any rank fell back to."""

    def handle_eval_oom(
        self, trainer: L.Trainer, pl_module: L.LightningModule, failed_size: int, error: BaseException
    ) -> None:
        """Evaluating ``failed_size`` samples ran out of memory: free memory before the batch is halved."""


def micro_batch_state(pl_module: Any) -> MicroBatchState | None:
    """The sizes of a module whose ``StepEngine`` runs its steps (``pl_module.engine``); None for other modules."""
    return getattr(getattr(pl_module, "engine", None), "micro_batch", None)


def find_oom_handler(trainer: Any) -> OOMHandler | None:
    """The trainer's first ``OOMHandler`` callback; None without a trainer or without such a callback."""
    if trainer is None:
        return None
    return next((cb for cb in trainer.callbacks if isinstance(cb, OOMHandler)), None)
