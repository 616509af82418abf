"""Decoder-only summarization through the same CLI: prompt + summary, loss on the summary, prompt stripped."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
import torch

from lit_qsum.cli import main

DEMO = str(Path(__file__).resolve().parents[2] / "configs" / "demo.yaml")
TINY_LLAMA = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512}


def test_tiny_llama_fits_and_predicts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["lit-qsum"])
    common = ["--config", DEMO, "--model.model_config", json.dumps(TINY_LLAMA), "--trainer.enable_progress_bar", "false",
              "--model.generation.max_new_tokens", "6", "--data.encoder_max_len", "128", "--data.decoder_max_len", "32"]
    main(["fit", *common, "--trainer.max_steps", "4", "--trainer.val_check_interval", "2",
          "--data.max_eval_samples", "4", "--data.max_train_samples", "64", "--data.batch_size", "4",
          "--run_name", "llama"])
    ckpt = tmp_path / "outputs" / "demo" / "llama" / "checkpoints" / "best.ckpt"
    state = torch.load(ckpt, weights_only=False)
    assert state["lit_qsum"]["task"] == "causal"
    assert all("lora_" in k for k in state["state_dict"])
    main(["predict", *common, "--ckpt_path", str(ckpt),
          "--predictions.output_path", str(tmp_path / "pred.csv")])
    with (tmp_path / "pred.csv").open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 50 and rows[0]["fname"] == "test_0"
    # the prompt is never echoed back into the summary
    assert not any("Summarize the dialogue" in r["summary"] for r in rows)


def test_causal_batches_mask_the_prompt() -> None:
    from lit_qsum.data.datamodule import SummarizationDataModule

    dm = SummarizationDataModule(task="causal", batch_size=2, max_train_samples=4, max_eval_samples=2)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    labels, mask = batch["labels"], batch["attention_mask"]
    for row in range(labels.shape[0]):
        target = labels[row] != -100
        assert target.any()
        first = int(target.nonzero()[0])
        assert (labels[row, :first] == -100).all()  # prompt tokens carry no loss
        assert mask[row, first:][target[first:]].all()
    assert (batch["prompt_attention_mask"][:, -1] == 1).all()  # prompts are left-padded for generation
