"""SummarizationProgressBar: Lightning's Rich progress bar, fitted to step-bounded runs and to logs written to files.

``lit-qsum`` adds it unless a config brings its own progress bar or sets ``--trainer.enable_progress_bar false``.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import lightning.pytorch as L
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.types import STEP_OUTPUT
from typing_extensions import override

from lit_qsum.callbacks.step_watch import OptimizerStepWatch


class SummarizationProgressBar(RichProgressBar):
    """Rich bars on a terminal; a plain line every ``every_n_steps`` optimizer steps when output is not one.

    Two things Lightning's bar gets wrong here. Runs bounded by ``max_steps`` have ``max_epochs=-1``, which it
    shows as "Epoch 0/-2". And when output goes to a file (nohup, SLURM, CI) Rich draws nothing until the run
    ends, so a log shows no progress for hours; there, this bar prints a line per ``every_n_steps`` optimizer
    steps (step, epoch, loss, speed, time left) and one per validation (its metrics) instead of drawing bars.

    Args:
        every_n_steps: Optimizer steps between plain lines when output is not a terminal.
        plain: Force plain lines (True) or bars (False); None decides by whether stdout is a terminal.
        refresh_rate: Batches between bar redraws (Rich mode).
        leave: Keep finished epoch bars on screen (Rich mode).
    """

    def __init__(self, every_n_steps: int = 50, plain: bool | None = None, refresh_rate: int = 1,
                 leave: bool = False) -> None:
        if every_n_steps < 1:
            raise ValueError(f"SummarizationProgressBar: every_n_steps must be >= 1, got {every_n_steps}")
        super().__init__(refresh_rate=refresh_rate, leave=leave)
        self.every_n_steps = every_n_steps
        self.plain = plain
        self._watch = OptimizerStepWatch()
        self._started: tuple[float, int] | None = None  # (time, global step) when this fit's training began

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if self.plain is None:
            self.plain = not sys.stdout.isatty()
        if self.plain:
            self.disable()  # no Rich rendering at all: the plain lines replace it

    @override
    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, int | str | float | dict[str, float]]:
        items = super().get_metrics(trainer, pl_module)
        loss = _last_loss(pl_module)
        if loss is not None:
            items["train/loss"] = loss
        return items

    @override
    def _get_train_description(self, current_epoch: int) -> str:
        description = super()._get_train_description(current_epoch)
        if self.trainer.max_epochs is not None and self.trainer.max_epochs < 0:  # bounded by steps, not epochs
            description = description.replace(f"/{self.trainer.max_epochs - 1}", "", 1)
        return description

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._started = (time.monotonic(), trainer.global_step)
        self._watch.start(trainer)

    @override
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: STEP_OUTPUT, batch: Any,
                           batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        step = trainer.global_step
        if not self._watch.steps_since_last(trainer) or not self.plain or step % self.every_n_steps:
            return  # gradient accumulation, bars, or not a reporting step
        rank_zero_info(self.step_line(trainer, step))

    def step_line(self, trainer: L.Trainer, step: int) -> str:
        total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        parts = [f"step {step}" + (f"/{total} ({100 * step / total:.0f}%)" if total else ""), f"epoch {trainer.current_epoch}"]
        loss = _last_loss(trainer.lightning_module)
        if loss is None:
            loss = trainer.progress_bar_metrics.get("train/loss")  # a module that puts its loss on the bar itself
        if loss is not None:
            parts.append(f"train/loss {float(loss):.4f}")
        if self._started is not None:
            seconds, first = time.monotonic() - self._started[0], self._started[1]
            if step > first and seconds > 0:
                rate = (step - first) / seconds
                parts.append(f"{rate:.2f} steps/s")
                if total:
                    parts.append(f"~{_duration((total - step) / rate)} left")
        return " | ".join(parts)

    @override
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self.plain or trainer.sanity_checking:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/") and v.numel() == 1}
        if metrics:
            shown = ", ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items()))
            rank_zero_info(f"validation at step {self.validated_step(trainer, pl_module)}: {shown}")

    @staticmethod
    def validated_step(trainer: L.Trainer, pl_module: L.LightningModule) -> int:
        """The training step of the weights validated: ``validate`` restores no loop state (global_step 0), so
        there the step of the ``--ckpt_path`` checkpoint, which the module keeps."""
        step = getattr(pl_module, "checkpoint_step", None)
        return trainer.global_step if trainer.state.fn == "fit" or step is None else int(step)


    @override
    def on_predict_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                             batch_idx: int, dataloader_idx: int = 0) -> None:
        super().on_predict_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)
        total = trainer.num_predict_batches[dataloader_idx]
        done = batch_idx + 1
        # about every tenth of the batches, and the last (generation with beams can take a while per batch)
        if self.plain and total and (done == total or done % max(total // 10, 1) == 0):
            rank_zero_info(f"predict: batch {done}/{total} ({100 * done / total:.0f}%)")


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _last_loss(pl_module: L.LightningModule) -> float | None:
    """The loss of the last optimizer step the host has read (lit-qsum's step engine), without waiting for the GPU."""
    return getattr(getattr(pl_module, "engine", None), "last_loss", None)
