"""``last.ckpt`` for ``--ckpt_path last``: every N optimizer steps and when fit ends, never twice at one step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.types import STEP_OUTPUT
from typing_extensions import override


class LastCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` for the resume checkpoint, with two changes.

    1. It also saves when fit ends, so a 120-step run resumes from step 120 (not 100) and a 2-step run has a
       checkpoint at all. When ``max_steps`` ends the run the save is made at the end of the last batch, like the
       periodic ones, so a resume with a larger ``--trainer.max_steps`` goes on mid-epoch.
    2. A resumed run does not save again at the step it resumed from. ``ModelCheckpoint`` forgets the step it last
       saved at, so with gradient accumulation a resumed run saved again at that step one micro-batch later, over
       the file it had resumed from.

    Args:
        every_n_train_steps: Optimizer steps between saves (the run's last step is always saved).
        filename: File name without ``.ckpt``; ``--ckpt_path last`` looks for ``last``.
        dirpath: Folder; None = the run folder's ``checkpoints/`` (set by the CLI).
    """

    def __init__(self, every_n_train_steps: int = 200, filename: str = "last", dirpath: str | None = None) -> None:
        if every_n_train_steps < 1:
            raise ValueError(f"LastCheckpoint: every_n_train_steps must be >= 1, got {every_n_train_steps}")
        super().__init__(dirpath=dirpath, filename=filename, every_n_train_steps=every_n_train_steps,
                         save_top_k=1, enable_version_counter=False)

    @override
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: STEP_OUTPUT, batch: Any, batch_idx: int
    ) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if trainer.max_steps != -1 and trainer.global_step >= trainer.max_steps:
            self._save_final(trainer)

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self._save_final(trainer)  # fit ended by max_epochs, max_time or should_stop (not by an error: no call then)

    def _save_final(self, trainer: L.Trainer) -> None:
        # the same skip rules as every save (not during sanity checks, not twice at one step)
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_topk_checkpoint(trainer, self._monitor_candidates(trainer))

    @override
    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        # Lightning does not keep the step ModelCheckpoint last saved at. This callback saved at the resumed step if
        # the file is its own (a final save may fall between periods) or the step is one of its periods (every save
        # at that step, best.ckpt's at validation end included, comes after its save at the end of the batch).
        step = int(checkpoint.get("global_step", 0))
        ours = trainer.ckpt_path is not None and self.dirpath is not None and (
            Path(trainer.ckpt_path).absolute() == Path(self.dirpath, self.filename + self.FILE_EXTENSION).absolute()
        )
        if ours or step % self._every_n_train_steps == 0:
            self._last_global_step_saved = step
