"""Save the config a ``fit`` ran with into its run folder: ``config.yaml``, then ``config-resume-N.yaml`` per resume."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as L
from lightning.pytorch.cli import SaveConfigCallback
from typing_extensions import override

from lit_qsum.runs import is_run, next_config_name


class RunConfigSaver(SaveConfigCallback):
    """LightningCLI's ``SaveConfigCallback``, writing into the run folder instead of the logger's folder.

    Lightning saves ``config.yaml`` into ``trainer.log_dir`` for every command and replaces the previous one, so a
    ``predict`` overwrote the config its checkpoint was trained with. Here only ``fit`` saves, into its own run
    folder (``trainer.default_root_dir``, set by the CLI); a resume adds ``config-resume-N.yaml`` beside the first.
    (A fit outside a run folder, as ``lit-qsum sweep`` runs them, saves into the logger's folder as Lightning does.)
    The CLI hands it the config as the user gave it, before the run folder's paths were filled in, so re-running a
    saved config starts a new run instead of writing into this one.
    """

    @override
    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        folder = Path(trainer.default_root_dir)
        if is_run(folder):
            path = folder / next_config_name(folder)
        else:  # a Trainer the CLI built without running it (lit-qsum sweep): Lightning's place, the logger's folder
            folder = Path(trainer.log_dir or folder)
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / self.config_filename
        self.parser.save(self.config, str(path), skip_none=False, overwrite=True, multifile=self.multifile)
