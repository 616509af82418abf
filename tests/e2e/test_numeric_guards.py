"""NaN/Inf losses: skipped (no optimizer step), counted, and a run of them stops with advice."""

from __future__ import annotations

import lightning.pytorch as L
import pytest
import torch

from lit_qsum.data.datamodule import SummarizationDataModule
from lit_qsum.errors import UserInputError
from lit_qsum.module import SummarizationModule

TINY = {"model_type": "t5", "d_model": 64, "d_ff": 128, "d_kv": 16, "num_heads": 4, "num_layers": 1,
        "num_decoder_layers": 1, "feed_forward_proj": "gated-gelu", "dropout_rate": 0.0}


def fit(monkeypatch: pytest.MonkeyPatch, tmp_path, bad_calls: set[int], steps: int = 6, limit: int = 3):
    module = SummarizationModule(model_config=TINY, tokenizer="lit_qsum:demo", backend="lora", max_consecutive_nonfinite=limit)
    data = SummarizationDataModule(task="seq2seq", batch_size=4, max_train_samples=64, max_eval_samples=4)
    real_loss, calls = SummarizationModule._loss, {"n": 0}

    def loss(self, batch):
        calls["n"] += 1
        value = real_loss(self, batch)
        return value * float("nan") if calls["n"] in bad_calls and self.training else value

    monkeypatch.setattr(SummarizationModule, "_loss", loss)
    trainer = L.Trainer(accelerator="cpu", max_steps=steps, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, default_root_dir=tmp_path, use_distributed_sampler=False)
    trainer.fit(module, data)
    return module, trainer


def test_nan_losses_are_skipped_and_counted(monkeypatch, tmp_path) -> None:
    module, trainer = fit(monkeypatch, tmp_path, bad_calls={2, 3})
    assert module.nonfinite_total == 2
    assert trainer.global_step == 6  # the run went on to its last step
    for p in module.model.parameters():
        if p.requires_grad:
            assert torch.isfinite(p).all()  # a NaN never reached the weights


def test_a_run_of_nan_losses_stops_with_the_usual_causes(monkeypatch, tmp_path) -> None:
    with pytest.raises(UserInputError, match="non-finite losses in a row.*bf16-mixed"):
        fit(monkeypatch, tmp_path, bad_calls=set(range(1, 100)))
