"""What callbacks that act once per optimizer step share: the step counter they watch and the CUDA check."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import lightning.pytorch as L


def uses_cuda(trainer: L.Trainer) -> bool:
    """True when the trainer's root device is a CUDA GPU."""
    return trainer.strategy.root_device.type == "cuda"


class OptimizerStepWatch:
    """Tells a callback, at each train batch end, how many optimizer steps ran since it last looked.

    Under gradient accumulation several train batches end on one ``trainer.global_step``; callbacks that act once
    per optimizer step act when this returns more than zero.

    Example::

        def on_train_start(self, trainer, pl_module):
            self.watch.start(trainer)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if self.watch.steps_since_last(trainer) == 0:
                return  # the optimizer has not stepped yet
    """

    def __init__(self) -> None:
        self.last_step = -1

    def start(self, trainer: L.Trainer) -> None:
        """Count from the trainer's current step (call in ``on_train_start``: a resumed run starts past zero)."""
        self.last_step = trainer.global_step

    def steps_since_last(self, trainer: L.Trainer) -> int:
        """Optimizer steps since the previous call (or ``start``); 0 while accumulating."""
        step = trainer.global_step
        if step == self.last_step:
            return 0
        moved = step - self.last_step
        self.last_step = step
        return moved
