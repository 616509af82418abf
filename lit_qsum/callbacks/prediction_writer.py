"""Write generated summaries as the competition's submission CSV (``fname,summary``), in input order."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch.distributed as dist
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from lit_qsum.atomic_io import atomic_file
from lit_qsum.errors import UserInputError
from lit_qsum.writable import check_writable


class SummaryCsvWriter(BasePredictionWriter):
    """Gathers ``predict`` outputs from every rank and writes one UTF-8 CSV atomically on rank 0."""

    def __init__(self, output_path: str | None = None, overwrite: bool = False, allow_untrained: bool = False) -> None:
        """
        Args:
            output_path: CSV to write; None = ``predictions.csv`` in the trainer's ``default_root_dir``.
            overwrite: Replace an existing file (otherwise predict stops before generating anything).
            allow_untrained: Predict without ``--ckpt_path``, i.e. with the base model and a fresh LoRA adapter
                that changes nothing; otherwise ``lit-qsum predict`` stops and asks for a checkpoint.
        """
        super().__init__(write_interval="epoch")
        self.output_path = output_path
        self.overwrite = overwrite
        self.allow_untrained = allow_untrained

    def check_checkpoint(self, ckpt_path: str | None) -> None:
        """Stop a predict without a checkpoint, unless asked for (a fresh LoRA adapter is a no-op: the summaries
        would be the base model's, blank for the demo's random init, and could replace good predictions)."""
        if not ckpt_path and not self.allow_untrained:
            raise UserInputError(
                "predict needs --ckpt_path, the checkpoint to summarize with (e.g. outputs/demo/checkpoints/best.ckpt); "
                "without one the LoRA adapter is untrained and the summaries are the base model's. "
                "Pass --predictions.allow_untrained true to predict with the base model anyway."
            )

    def resolve_path(self, trainer: L.Trainer) -> Path:
        """Where the CSV goes for this trainer."""
        return Path(self.output_path or Path(trainer.default_root_dir) / "predictions.csv").expanduser()

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "predict":
            return
        path = self.resolve_path(trainer)
        # fail before generating for minutes, not after
        if path.exists() and not self.overwrite:
            raise UserInputError(f"{path} exists; pass --predictions.overwrite true or choose --predictions.output_path")
        if path.is_dir():
            raise UserInputError(f"--predictions.output_path {path} is a directory; give a .csv file path")
        check_writable(path, "--predictions.output_path")

    @override
    def write_on_epoch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, predictions: Sequence[Any], batch_indices: Sequence[Any]
    ) -> None:
        rows: dict[int, tuple[str, str]] = {}
        for batch in _flatten(predictions):
            rows.update({i: (f, s) for i, f, s in zip(batch["index"], batch["fname"], batch["summary"])})
        if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            # each rank generated its own shard; rank 0 writes them all, once, in input order
            gathered: list[dict[int, tuple[str, str]] | None] = [None] * trainer.world_size
            dist.all_gather_object(gathered, rows)
            rows = {k: v for part in gathered if part for k, v in part.items()}
        if trainer.is_global_zero:
            path = self.resolve_path(trainer)
            try:
                write_csv_atomic(path, [rows[i] for i in sorted(rows)])
            except OSError as err:
                raise UserInputError(f"could not write predictions to {path}: {err.strerror or err}") from err
            rank_zero_info(f"wrote {len(rows)} summaries to {path}")


def _flatten(predictions: Sequence[Any]) -> list[dict]:
    # one dataloader gives a list of batch dicts; several give a list of such lists
    if predictions and isinstance(predictions[0], list):
        return [b for group in predictions for b in group]
    return list(predictions)


def write_csv_atomic(path: Path, rows: list[tuple[str, str]]) -> None:
    """Write ``fname,summary`` rows to a temp file beside ``path``, then rename it into place."""
    with atomic_file(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["fname", "summary"])
        writer.writerows(rows)
