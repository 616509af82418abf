"""A boring model fed summarizer-shaped dict batches, and a real CPU Trainer to run callbacks in."""

import csv
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import pytest
import torch
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, Dataset

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


# ---- the real summarizer, tiny: for callbacks that work with SummarizationModule and its data module ----------------
DEMO_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"


class FakeMemory:
    """Stands in for a GPU's memory on CPU: training forwards (``_loss``) or generation raise a CUDA OOM when a batch
    costs more than ``budget`` (samples, or padded tokens with ``per_token``), or at chosen call numbers.

    Records what ran: ``trained`` holds (optimizer steps done before it, sample indices) of every training forward that
    succeeded, ``generated`` the indices of every generation that succeeded, ``ooms`` the sizes that failed.
    """

    def __init__(
        self,
        module: Any,
        train_budget: float = float("inf"),
        eval_budget: float = float("inf"),
        per_token: bool = False,
        fail_calls: Sequence[int] = (),
    ) -> None:
        self.module, self.per_token = module, per_token
        self.train_budget, self.eval_budget, self.fail_calls = train_budget, eval_budget, set(fail_calls)
        self.calls = 0
        self.trained: list[tuple[int, list[int]]] = []
        self.generated: list[list[int]] = []
        self.ooms: list[int] = []
        loss, generate = module._loss, module.generate

        def fake_loss(batch: dict[str, Any]) -> torch.Tensor:
            if not module.training:
                return loss(batch)
            call, self.calls = self.calls, self.calls + 1
            if call in self.fail_calls or self.cost(batch) > self.train_budget:
                self.ooms.append(len(batch["index"]))
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (fake)")
            self.trained.append((module.trainer.global_step, batch["index"].tolist()))
            return loss(batch)

        def fake_generate(batch: dict[str, Any]) -> list[str]:
            if self.cost(batch) > self.eval_budget:
                self.ooms.append(len(batch["index"]))
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (fake)")
            self.generated.append(batch["index"].tolist())
            return generate(batch)

        module._loss, module.generate = fake_loss, fake_generate

    def cost(self, batch: dict[str, Any]) -> int:
        return padded_tokens(batch) if self.per_token else len(batch["index"])


def padded_tokens(batch: dict[str, Any]) -> int:
    """Input and label positions of a batch, padding included: what activation memory grows with."""
    return batch["input_ids"].numel() + (batch["labels"].numel() if "labels" in batch else 0)


@pytest.fixture
def make_summarizer():
    """SummarizationModule with the demo's tiny random-init T5, LoRA without dropout (steps are deterministic)."""
    import yaml

    from lit_qsum.module import SummarizationModule
    from lit_qsum.settings import GenerationSettings, LoraSettings

    model_config = yaml.safe_load(DEMO_CONFIG.read_text())["model"]["model_config"]

    def make(**kwargs: Any) -> SummarizationModule:
        defaults: dict[str, Any] = dict(
            model_config=model_config,
            tokenizer="lit_qsum:demo",
            backend="lora",
            lora=LoraSettings(rank=4, alpha=8, dropout=0.0),
            generation=GenerationSettings(num_beams=1, max_new_tokens=4),
            warmup_ratio=0.0,
        )
        return SummarizationModule(**{**defaults, **kwargs})

    return make


@pytest.fixture
def make_summary_data():
    from lit_qsum.data.datamodule import SummarizationDataModule

    def make(**kwargs: Any) -> SummarizationDataModule:
        defaults: dict[str, Any] = dict(
            task="seq2seq", batch_size=4, max_train_samples=32, max_eval_samples=8, eval_batch_size=8,
            encoder_max_len=64, decoder_max_len=16,
        )
        return SummarizationDataModule(**{**defaults, **kwargs})

    return make


@pytest.fixture
def summary_trainer(tmp_path: Path):
    def make(callbacks: list[L.Callback], **kwargs: Any) -> L.Trainer:
        defaults: dict[str, Any] = dict(
            accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
            num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=tmp_path,
        )
        torch.manual_seed(0)  # peft's LoRA init (in the module's setup) draws from the global RNG: runs compare
        return L.Trainer(callbacks=callbacks, **{**defaults, **kwargs})

    return make
