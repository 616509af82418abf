"""Release a run folder's lock when fit ends, and remove the folder of a new run that failed before it trained."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning.pytorch as L
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from lit_qsum.runs import CHECKPOINTS, RunFolder


class RunFolderKeeper(Callback):
    """Closes the ``RunFolder`` the CLI opened for ``fit`` (added by the CLI, not by configs).

    A fit that fails on bad data, a bad flag or an OOM at step 0 leaves no empty run folder behind; one that trained
    or saved a checkpoint keeps its folder, logs and checkpoints for a look or a resume. A run folder that was moved
    or copied since its checkpoint was saved resumes with its best-checkpoint bookkeeping (see ``on_load_checkpoint``).
    """

    def __init__(self, run: RunFolder) -> None:
        """
        Args:
            run: The run folder this fit writes into.
        """
        self.run = run

    @override
    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.run.close(failed=True, trained=trainer.global_step > 0)

    @override
    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            self.run.close(failed=False)

    @override
    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        # ModelCheckpoint keeps absolute paths and restores its best score only if its folder is unchanged; a run
        # moved to another disk would forget which checkpoint is best, and its next validation would replace
        # best.ckpt with a worse model. Paths under the run's old checkpoints/ are pointed to where it is now.
        here = os.path.realpath(self.run.path / CHECKPOINTS)
        for state in (checkpoint.get("callbacks") or {}).values():
            old = state.get("dirpath") if isinstance(state, dict) else None
            if not isinstance(old, str) or old == here or Path(old).parent.name != self.run.path.name:
                continue
            if Path(old).name != CHECKPOINTS:
                continue

            def moved(path: Any, old: str = old) -> Any:
                return here + path[len(old):] if isinstance(path, str) and path.startswith(old) else path

            for key in ("dirpath", "best_model_path", "kth_best_model_path", "last_model_path"):
                if key in state:
                    state[key] = moved(state[key])
            if isinstance(state.get("best_k_models"), dict):
                state["best_k_models"] = {moved(path): score for path, score in state["best_k_models"].items()}
