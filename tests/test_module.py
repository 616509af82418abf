"""SummarizationModule pieces that need no model: what validation logs."""

from __future__ import annotations

import pytest
import torch

from lit_qsum.module import SummarizationModule


def test_validation_logs_num_logged_examples_not_a_whole_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    module = SummarizationModule(model_config={"model_type": "t5"}, tokenizer="lit_qsum:demo", num_logged_examples=4)
    size = 50  # the demo's eval_batch_size
    batch = {"index": torch.arange(size), "dialogue": [f"dialogue {i}" for i in range(size)],
             "references": [[f"reference {i}"] for i in range(size)]}
    predictions = [f"prediction {i}" for i in range(size)]
    monkeypatch.setattr(module.engine, "eval_with_oom_retry", lambda chunk, fn: [(chunk, (torch.tensor(1.0), predictions))])
    monkeypatch.setattr(module, "log", lambda *args, **kwargs: None)
    module._eval_step(batch, 0, "val", module.val_rouge)
    module._eval_step(batch, 1, "val", module.val_rouge)
    assert module.val_examples == [(f"dialogue {i}", f"reference {i}", f"prediction {i}") for i in range(4)]


def test_model_and_data_share_one_tokenizer_and_refuse_two(monkeypatch: pytest.MonkeyPatch) -> None:
    """setup hands the data module's tokenizer to the model loader (loaded once); a different one is an error."""
    from types import SimpleNamespace

    from lit_qsum.data.datamodule import SummarizationDataModule
    from lit_qsum.errors import UserInputError

    module = SummarizationModule(model_config={"model_type": "t5"}, tokenizer="lit_qsum:demo")
    data = SummarizationDataModule(tokenizer="lit_qsum:demo")
    assert module._data_tokenizer(SimpleNamespace(datamodule=data)) is data.tokenizer
    assert module._data_tokenizer(SimpleNamespace(datamodule=None)) is None
    other = SummarizationDataModule(tokenizer="gpt2")
    with pytest.raises(UserInputError, match="--data.tokenizer 'gpt2' is not the model's tokenizer 'lit_qsum:demo'"):
        module._data_tokenizer(SimpleNamespace(datamodule=other))
