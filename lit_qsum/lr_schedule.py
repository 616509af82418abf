"""The built-in learning-rate schedule: linear warmup from 0, then linear or cosine decay, or constant."""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch.optim.lr_scheduler import LRScheduler
from typing_extensions import override

LRDecay = Literal["linear", "cosine", "constant"]
_UNBOUNDED_STEPS = 10_000  # the length assumed when the run is bounded by time alone


class WarmupDecayLR(LRScheduler):
    """Warmup over ``warmup_ratio`` of ``total_steps`` optimizer steps, then ``decay`` to 0 at ``total_steps``.

    The total can be changed after construction (``set_total_steps``): the module sizes the schedule when it
    builds the optimizer and again at train start, once callbacks have settled the batch size. ``state_dict``
    holds the step count and the total; ``load_state_dict`` also accepts the state of the ``LambdaLR`` that
    checkpoints from before this class carry (same step count, no total: the module measures it at train start).

    Args:
        optimizer: The optimizer whose learning rates are scheduled.
        total_steps: Optimizer steps of the whole run; not finite = bounded by time alone (10,000 assumed).
        warmup_ratio: Fraction of ``total_steps`` spent warming the LR up from 0.
        decay: Shape after warmup.
        last_epoch: Index of the last step, as in torch's schedulers (-1: a new run).

    Raises:
        ValueError: If ``warmup_ratio`` is not in [0, 1) or ``decay`` is not one of linear, cosine, constant.

    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        total_steps: float,
        warmup_ratio: float = 0.0,
        decay: LRDecay = "linear",
        last_epoch: int = -1,
    ) -> None:
        if not 0.0 <= warmup_ratio < 1.0:
            raise ValueError(f"WarmupDecayLR: warmup_ratio must be in [0, 1), got {warmup_ratio}")
        if decay not in ("linear", "cosine", "constant"):
            raise ValueError(f"WarmupDecayLR: decay must be linear, cosine or constant, got {decay!r}")
        self.total_steps = total_steps
        self.warmup_ratio = warmup_ratio
        self.decay = decay
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        """The multiple of each group's initial LR at optimizer step ``step``."""
        total = max(int(self.total_steps) if math.isfinite(self.total_steps) else _UNBOUNDED_STEPS, 1)
        warmup = int(self.warmup_ratio * total)
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if self.decay == "constant":
            return 1.0
        progress = min((step - warmup) / max(total - warmup, 1), 1.0)
        if self.decay == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return max(1.0 - progress, 0.0)

    @override
    def get_lr(self) -> list[float]:
        return [base_lr * self.factor(self.last_epoch) for base_lr in self.base_lrs]

    def set_total_steps(self, total_steps: float) -> None:
        """Re-size the schedule and set the LR in force to the new schedule's value at the current step."""
        self.total_steps = total_steps
        factor = self.factor(self.last_epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor

    @override
    def state_dict(self) -> dict[str, Any]:
        # warmup_ratio and decay are settings: a resume takes them from its config, as it takes the optimizer's
        return {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "warmup_ratio", "decay")}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.__dict__.update({k: v for k, v in state_dict.items() if k not in ("lr_lambdas", "warmup_ratio", "decay")})
