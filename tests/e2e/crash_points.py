"""``KillAt``: a callback that stops a training run at a chosen point, as a crash or ``kill -9`` would.

The plan comes from the environment, so one YAML serves the uninterrupted run and every interrupted one:
``KILL_AT=batch:N`` stops before micro-batch N (1-based, counted over the whole run, resumes included);
``KILL_AT=save:K:R`` stops inside this process's K-th checkpoint save, before its R-th rename (1: the old
adapter folder set aside, 2: the new .ckpt into place, 3: the new adapter folder into place);
``KILL_AT=validation:N`` stops before this process's N-th validation batch. ``SAVE_AT=N`` saves
``checkpoints/mid-step.ckpt`` after micro-batch N, wherever that falls in an optimizer step. ``KILL_HOW=sigkill`` (the default)
sends SIGKILL to the process: nothing is cleaned up. ``KILL_HOW=raise`` raises ``Killed`` instead, for in-process
runs. The subprocess tests put this folder on ``PYTHONPATH``, so the YAML names it ``crash_points.KillAt``.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import lightning.pytorch as L
from lightning.pytorch.callbacks import Callback


class Killed(BaseException):
    """The in-process stand-in for SIGKILL (a BaseException, so no ``except Exception`` swallows it)."""


def _die() -> None:
    if os.environ.get("KILL_HOW", "sigkill") == "raise":
        raise Killed(os.environ.get("KILL_AT", ""))
    os.kill(os.getpid(), signal.SIGKILL)


class KillAt(Callback):
    """Stops the run where ``KILL_AT`` says (see the module docstring); does nothing when it is unset."""

    def __init__(self) -> None:
        kind, *numbers = (os.environ.get("KILL_AT") or "none").split(":")
        self.kind, self.numbers = kind, [int(n) for n in numbers]
        self.saves = 0
        self.validation_batches = 0
        self._real: dict[str, Any] = {}

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        # ``ready`` counts the batch about to run, over the whole fit, and is restored on resume
        if self.kind == "batch" and trainer.fit_loop.epoch_loop.batch_progress.total.ready == self.numbers[0]:
            _die()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        done = trainer.fit_loop.epoch_loop.batch_progress.total.ready
        if os.environ.get("SAVE_AT") and done == int(os.environ["SAVE_AT"]):
            trainer.save_checkpoint(Path(trainer.default_root_dir) / "checkpoints" / "mid-step.ckpt")

    def on_validation_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                                  batch_idx: int, dataloader_idx: int = 0) -> None:
        self.validation_batches += 1
        if self.kind == "validation" and not trainer.sanity_checking and self.validation_batches == self.numbers[0]:
            _die()

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        # called while the checkpoint dict is built, before anything is written: arm the rename counter
        self.saves += 1
        if self.kind == "save" and self.saves == self.numbers[0]:
            self._arm(self.numbers[1])

    def _arm(self, at: int) -> None:
        renames = [0]

        def counting(name: str):
            real = getattr(os, name)

            def rename(*args: Any, **kwargs: Any) -> Any:
                renames[0] += 1
                if renames[0] == at:
                    _die()
                return real(*args, **kwargs)

            return rename

        for name in ("rename", "replace"):  # Path.rename and os.replace both end in these
            setattr(os, name, counting(name))
