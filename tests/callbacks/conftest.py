"""A boring model fed summarizer-shaped dict batches, and a real CPU Trainer to run callbacks in."""

import csv
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

import lightning.pytorch as L
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.loggers import CSVLogger

SEQ_LEN = 10
BATCH_SIZE = 2


class PaddedDialogues(Dataset):
    """Samples of 3..8 real tokens padded to SEQ_LEN; the first two tokens are prompt (label -100)."""

    def __len__(self) -> int:
        return 64

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        n = 3 + i % 6
        mask = torch.zeros(SEQ_LEN, dtype=torch.long)
        mask[:n] = 1
        labels = torch.full((SEQ_LEN,), -100, dtype=torch.long)
        labels[2:n] = 7
        input_ids = torch.arange(1, SEQ_LEN + 1) * mask
        return {"features": torch.randn(32), "input_ids": input_ids, "attention_mask": mask, "labels": labels}


def collate(samples: Sequence[dict[str, torch.Tensor]], with_num_tokens: bool = True) -> dict[str, torch.Tensor]:
    batch = {key: torch.stack([s[key] for s in samples]) for key in samples[0]}
    if with_num_tokens:
        batch["num_tokens"] = batch["attention_mask"].sum() + (batch["labels"] != -100).sum()
    return batch


class DictBoringModel(BoringModel):
    """BoringModel on dict batches; remembers the tokens and samples its training steps saw."""

    def __init__(self, with_num_tokens: bool = True, val_sleep_s: float = 0.0) -> None:
        super().__init__()
        self.with_num_tokens = with_num_tokens
        self.val_sleep_s = val_sleep_s
        self.seen_tokens = 0
        self.seen_samples = 0

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        self.seen_tokens += int(batch["attention_mask"].sum() + (batch["labels"] != -100).sum())
        self.seen_samples += batch["input_ids"].shape[0]
        return {"loss": self.step(batch["features"])}

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        time.sleep(self.val_sleep_s)
        return {"x": self.step(batch["features"])}

    def train_dataloader(self) -> DataLoader:
        return DataLoader(PaddedDialogues(), batch_size=BATCH_SIZE, collate_fn=self._collate)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(PaddedDialogues(), batch_size=BATCH_SIZE, collate_fn=self._collate)

    def _collate(self, samples: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        return collate(samples, with_num_tokens=self.with_num_tokens)


@pytest.fixture
def make_trainer(tmp_path: Path):
    def make(callbacks: list[L.Callback], **kwargs: Any) -> L.Trainer:
        defaults: dict[str, Any] = dict(
            accelerator="cpu",
            devices=1,
            max_steps=10,
            limit_val_batches=2,
            log_every_n_steps=1,
            logger=CSVLogger(tmp_path, name="logs"),
            default_root_dir=tmp_path,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
        )
        return L.Trainer(callbacks=callbacks, **{**defaults, **kwargs})

    return make


@pytest.fixture
def make_model():
    return DictBoringModel


def _logged(trainer: L.Trainer, key: str) -> dict[int, float]:
    """The values a CSVLogger wrote for ``key``, by logged step."""
    trainer.logger.save()
    with open(Path(trainer.logger.log_dir) / "metrics.csv") as f:
        return {int(row["step"]): float(row[key]) for row in csv.DictReader(f) if row.get(key)}


def _logged_keys(trainer: L.Trainer) -> set[str]:
    trainer.logger.save()
    with open(Path(trainer.logger.log_dir) / "metrics.csv") as f:
        return set(csv.DictReader(f).fieldnames or ())


@pytest.fixture
def read_logged():
    return _logged


@pytest.fixture
def read_logged_keys():
    return _logged_keys


@pytest.fixture
def lightning_caplog(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> pytest.LogCaptureFixture:
    """caplog that sees rank_zero_info: Lightning stops propagation when the root logger had no handler at import."""
    monkeypatch.setattr(logging.getLogger("lightning.pytorch"), "propagate", True)
    caplog.set_level(logging.INFO, logger="lightning.pytorch")
    return caplog
