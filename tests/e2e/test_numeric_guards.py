"""NaN/Inf losses: the optimizer step holding one is skipped whole, counted, and a run of them stops with advice.

The check is one device-side count read once per optimizer step, not a host sync per micro-batch."""

from __future__ import annotations

import lightning.pytorch as L
import pytest
import torch

from lit_qsum.data.datamodule import SummarizationDataModule
from lit_qsum.distributed import grad_sync
from lit_qsum.errors import UserInputError
from lit_qsum.module import SummarizationModule

TINY = {"model_type": "t5", "d_model": 64, "d_ff": 128, "d_kv": 16, "num_heads": 4, "num_layers": 1,
        "num_decoder_layers": 1, "feed_forward_proj": "gated-gelu", "dropout_rate": 0.0}


def fit(monkeypatch: pytest.MonkeyPatch, tmp_path, bad_calls: set[int], steps: int = 6, limit: int = 3, accumulate: int = 1):
    module = SummarizationModule(model_config=TINY, tokenizer="lit_qsum:demo", backend="lora", max_consecutive_nonfinite=limit,
                                 accumulate_grad_batches=accumulate)
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
    assert module.engine.nonfinite.total == 2
    assert trainer.global_step == 6  # the run went on to its last step
    for p in module.model.parameters():
        if p.requires_grad:
            assert torch.isfinite(p).all()  # a NaN never reached the weights


def test_a_run_of_nan_losses_stops_with_the_usual_causes(monkeypatch, tmp_path) -> None:
    with pytest.raises(UserInputError, match="3 optimizer steps in a row had non-finite losses.*bf16-mixed"):
        fit(monkeypatch, tmp_path, bad_calls=set(range(1, 100)))


def test_one_nan_micro_batch_skips_its_whole_step_and_is_read_once_per_step(monkeypatch, tmp_path) -> None:
    reads = {"n": 0}
    real_agree = grad_sync.agree

    def agree(values, device):
        reads["n"] += 1
        return real_agree(values, device)

    monkeypatch.setattr(grad_sync, "agree", agree)
    # micro-batches 1-2 are step 1, 3-4 step 2 (micro-batch 4 is NaN, so micro-batch 3's gradient is dropped too)
    module, trainer = fit(monkeypatch, tmp_path, bad_calls={4}, steps=4, accumulate=2)
    assert module.engine.nonfinite.total == 1 and module.engine.nonfinite.in_a_row == 0
    assert trainer.global_step == 4
    assert reads["n"] == 5  # once per optimizer step (4 taken + 1 skipped), not once per micro-batch (10)
    assert all(torch.isfinite(p).all() for p in module.model.parameters() if p.requires_grad)


@pytest.mark.parametrize("precision", ["16-mixed", "32-true"])
def test_gradient_clipping_sees_unscaled_gradients(tmp_path, precision) -> None:
    """One SGD step (lr 1) with the norm clipped to 1e-4 moves the LoRA weights by exactly 1e-4, also under 16-mixed,
    whose GradScaler multiplies the gradients by 2**16 until it unscales them inside optimizer.step()."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    bart = {"model_type": "bart", "d_model": 32, "encoder_layers": 1, "decoder_layers": 1, "encoder_attention_heads": 2,
            "decoder_attention_heads": 2, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64, "max_position_embeddings": 1024,
            "dropout": 0.0}  # not T5: lit-qsum refuses float16 for the T5 family
    module = SummarizationModule(model_config=bart, tokenizer="lit_qsum:demo", backend="lora", gradient_clip_val=1e-4,
                                 optimizer=lambda params: torch.optim.SGD(params, lr=1.0), scheduler=None,
                                 lr_decay="constant", warmup_ratio=0.0)
    data = SummarizationDataModule(task="seq2seq", batch_size=4, max_train_samples=8, max_eval_samples=4)
    # on a CPU Lightning turns precision="16-mixed" into bf16; the plugin given whole keeps float16 and its scaler
    plugins = [MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=2.0**16))] \
        if precision == "16-mixed" else []
    trainer = L.Trainer(accelerator="cpu", max_steps=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, default_root_dir=tmp_path, plugins=plugins)
    before: dict[str, torch.Tensor] = {}

    class Snapshot(L.Callback):
        def on_train_start(self, trainer, pl_module):
            before.update({n: p.detach().clone() for n, p in pl_module.named_parameters() if p.requires_grad})

    trainer.callbacks.append(Snapshot())
    trainer.fit(module, data)
    after = {n: p.detach() for n, p in module.named_parameters() if p.requires_grad}
    moved = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(after[n] - before[n]) for n in before]))
    assert moved == pytest.approx(1e-4, rel=1e-3)  # the gradient norm is ~0.009: the clip is what bounds the step
