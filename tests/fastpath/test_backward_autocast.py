"""``speed.backward_outside_autocast``: Lightning runs a manually optimized module's backward inside
``training_step``, so under bf16-mixed the backward runs with autocast on unless the setting turns it off there."""

from __future__ import annotations

import lightning.pytorch as L
import pytest
import torch

from lit_qsum.data.datamodule import SummarizationDataModule
from lit_qsum.module import SummarizationModule
from lit_qsum.settings import LoraSettings, SpeedSettings

TINY_T5 = {"model_type": "t5", "d_model": 32, "d_ff": 64, "d_kv": 8, "num_heads": 4, "num_layers": 2,
           "num_decoder_layers": 2, "feed_forward_proj": "gated-gelu", "dropout_rate": 0.1}


class AutocastInBackward(L.Callback):
    """Records, for every backward through the first trainable tensor, whether CPU autocast was on there (on the CPU
    the backward runs in the calling thread, so a gradient hook sees its thread-local autocast state)."""

    def __init__(self) -> None:
        self.seen: list[bool] = []
        self.in_forward: list[bool] = []

    def on_train_start(self, trainer, pl_module) -> None:
        param = next(p for p in pl_module.model.parameters() if p.requires_grad)
        param.register_hook(lambda grad: self.seen.append(torch.is_autocast_enabled("cpu")))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.in_forward.append(torch.is_autocast_enabled("cpu"))


class KeepGrads(L.Callback):
    """The adapter's gradients as the optimizer step gets them."""

    def __init__(self) -> None:
        self.grads: dict[str, torch.Tensor] = {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.grads = {n: p.grad.detach().clone() for n, p in pl_module.model.named_parameters()
                      if p.requires_grad and p.grad is not None}


def fit_bf16(root, outside: bool, steps: int, samples: int, dropout: float, callback: L.Callback) -> None:
    """A tiny T5 LoRA fit under CPU bf16-mixed, with ``speed.backward_outside_autocast`` as given."""
    module = SummarizationModule(model_config=TINY_T5, tokenizer="lit_qsum:demo", backend="lora", init_seed=3,
                                 lora=LoraSettings(rank=4, alpha=8, dropout=dropout),
                                 speed=SpeedSettings(backward_outside_autocast=outside))
    data = SummarizationDataModule(task="seq2seq", batch_size=4, max_train_samples=samples, max_eval_samples=4)
    trainer = L.Trainer(accelerator="cpu", devices=1, precision="bf16-mixed", max_steps=steps, limit_val_batches=0,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        default_root_dir=root, callbacks=[callback])
    trainer.fit(module, data)


@pytest.mark.parametrize("outside", [False, True])
def test_backward_runs_without_autocast_only_when_asked(tmp_path, outside: bool) -> None:
    probe = AutocastInBackward()
    fit_bf16(tmp_path, outside, steps=3, samples=16, dropout=0.05, callback=probe)
    assert len(probe.seen) == 3  # one backward per step reached the hook
    # the hook sees the backward's own state: on as Lightning leaves it, off with the setting
    assert probe.seen == [not outside] * 3
    assert torch.is_autocast_enabled("cpu") is False  # nothing left switched on or off after the fit


def test_backward_outside_autocast_keeps_the_gradients_within_bf16_rounding(tmp_path) -> None:
    grads = {}
    for outside in (False, True):
        L.seed_everything(0, verbose=False)
        keep = KeepGrads()
        fit_bf16(tmp_path / str(outside), outside, steps=1, samples=4, dropout=0.0, callback=keep)
        grads[outside] = keep.grads
    assert grads[False].keys() == grads[True].keys() and grads[False]
    for name, grad in grads[False].items():
        other = grads[True][name]
        scale = grad.abs().max().clamp_min(1e-12)
        assert (grad - other).abs().max() / scale < 2e-2, name
