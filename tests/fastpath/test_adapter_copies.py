"""``speed.adapter_copies``: each fused LoRA layer keeps its adapter in the compute dtype, remade once per optimizer
step, instead of casting it in every forward and recompute. The same values as the casts, so training is bitwise
the same; the step engine's refresh keeps the copies current, which a CUDA graph's replay relies on (it reads them
without the forward's check)."""

from __future__ import annotations

import copy

import lightning.pytorch as L
import torch

from lit_qsum.data.datamodule import SummarizationDataModule
from lit_qsum.fastpath import apply_speedups
from lit_qsum.fastpath.lora_linear import CopyStats, fused_plans
from lit_qsum.module import SummarizationModule
from lit_qsum.settings import LoraSettings, SpeedSettings
from tiny_lora_models import load_tiny, loss_and_grads, tiny_batch

TINY_T5 = {"model_type": "t5", "d_model": 64, "d_ff": 128, "d_kv": 16, "num_heads": 4, "num_layers": 2,
           "num_decoder_layers": 2, "feed_forward_proj": "gated-gelu", "dropout_rate": 0.1}


def test_copies_give_the_casts_values_and_follow_the_weights_in_place() -> None:
    _, plain = load_tiny("t5", "qlora", True, dropout=0.05)
    kept = copy.deepcopy(plain)
    settings = {"device": torch.device("cpu"), "gradient_checkpointing": True, "precision": "bf16-mixed"}
    apply_speedups(plain, SpeedSettings(adapter_copies=False), **settings)
    apply_speedups(kept, SpeedSettings(adapter_copies=True), **settings)
    batch = tiny_batch("t5", plain.config.vocab_size)
    for round_ in range(2):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            want_loss, want = loss_and_grads(plain, batch, seed=5)
            got_loss, got = loss_and_grads(kept, batch, seed=5)
        assert torch.equal(got_loss, want_loss), round_
        assert want and all(torch.equal(got[n], g) for n, g in want.items()), round_
        plans = fused_plans(kept)
        assert plans and all(p.copies is not None and p.copies[0].dtype == torch.bfloat16 for p in plans)
        # an update in place (as an optimizer's) changes the weights under the copies: the next forward must see it
        with torch.no_grad():
            for model in (plain, kept):
                for name, param in model.named_parameters():
                    if "lora_" in name:
                        param.add_(torch.full_like(param, 0.01))


def fit(tmp_path, copies: bool) -> tuple[SummarizationModule, int]:
    """Four optimizer steps of two micro-batches each, LoRA dropout 0.05, bf16-mixed (what the GPU configs run)."""
    module = SummarizationModule(model_config=TINY_T5, tokenizer="lit_qsum:demo", backend="qlora", init_seed=3,
                                 lora=LoraSettings(rank=4, alpha=8, dropout=0.05), gradient_checkpointing=True,
                                 accumulate_grad_batches=2, speed=SpeedSettings(adapter_copies=copies))
    data = SummarizationDataModule(task="seq2seq", batch_size=4, max_train_samples=64, max_eval_samples=4)
    before = {}

    class AfterFirstStep(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args) -> None:
            if trainer.global_step == 1 and not before:
                before["lazy"] = CopyStats.lazy_refreshes

    trainer = L.Trainer(accelerator="cpu", precision="bf16-mixed", max_steps=4, limit_val_batches=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, default_root_dir=tmp_path,
                        callbacks=[AfterFirstStep()])
    L.seed_everything(0)
    trainer.fit(module, data)
    return module, CopyStats.lazy_refreshes - before["lazy"]


def test_training_with_copies_is_bitwise_training_without_and_the_engine_keeps_them_current(tmp_path) -> None:
    with_copies, lazy = fit(tmp_path / "a", copies=True)
    without, _ = fit(tmp_path / "b", copies=False)
    assert fused_plans(with_copies.model) and not fused_plans(without.model)
    weights = {n: p for n, p in without.model.named_parameters() if p.requires_grad}
    assert weights
    for name, param in with_copies.model.named_parameters():
        if param.requires_grad:
            assert torch.equal(param, weights[name]), name
    # after the first optimizer step every copy was remade by the engine's refresh, never by a forward's check: the
    # check is all a CUDA graph's replay would skip
    assert lazy == 0
