"""T5's float32 ``wo`` layers stored in bf16 under bf16 precision: same loss and LoRA gradients, half the memory."""

from __future__ import annotations

import copy

import pytest
import torch

from lit_qsum.fastpath import apply_speedups
from lit_qsum.fastpath.apply import fp32_modules_to
from lit_qsum.settings import LoraSettings, QuantizationSettings, SpeedSettings

TINY_T5 = {"model_type": "t5", "d_model": 64, "d_ff": 128, "d_kv": 16, "num_heads": 4, "num_layers": 2,
           "num_decoder_layers": 2, "feed_forward_proj": "gated-gelu", "dropout_rate": 0.1}  # as users train


def _model(backend: str):
    from lit_qsum.backends.loader import ModelSpec, load_model

    spec = ModelSpec(model_config=TINY_T5, tokenizer="lit_qsum:demo", backend=backend,
                     lora=LoraSettings(rank=4, alpha=8, dropout=0.05), quantization=QuantizationSettings(),
                     gradient_checkpointing=False, init_seed=1)
    model = load_model(spec, device=torch.device("cpu")).model.train()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    return model


def _step(model) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(5, 100, (2, 12), generator=gen), "attention_mask": torch.ones(2, 12, dtype=torch.long),
             "labels": torch.randint(5, 100, (2, 6), generator=gen)}
    batch["attention_mask"][1, 9:] = 0
    torch.manual_seed(5)  # the same dropout masks for both models
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(**batch).loss
        loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("backend", ["qlora", "lora"])
def test_wo_in_bf16_gives_the_same_loss_and_gradients_under_bf16_autocast(backend: str) -> None:
    fused = True
    model = _model(backend)
    wo = [p for n, p in model.named_parameters() if ".wo." in n and not p.requires_grad]
    assert wo and all(p.dtype == torch.float32 for p in wo)  # transformers keeps T5's wo in float32
    other = copy.deepcopy(model)
    apply_speedups(model, SpeedSettings(fused_lora=fused, fp32_modules_in_bf16=False), device=torch.device("cpu"),
                   gradient_checkpointing=False, precision="bf16-mixed")
    lines = apply_speedups(other, SpeedSettings(fused_lora=fused), device=torch.device("cpu"),
                           gradient_checkpointing=False, precision="bf16-mixed")
    assert any("stored in bf16" in line for line in lines)
    assert all(p.dtype == torch.bfloat16 for n, p in other.named_parameters() if ".wo." in n and not p.requires_grad)
    assert all(p.dtype == torch.float32 for p in other.parameters() if p.requires_grad)  # adapters stay float32
    want_loss, want = _step(model)
    got_loss, got = _step(other)
    torch.testing.assert_close(got_loss, want_loss, rtol=0, atol=0)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=0, msg=name)


def test_only_bf16_precisions_and_frozen_float32_tensors_change() -> None:
    model = _model("lora")
    lines = apply_speedups(model, SpeedSettings(fused_lora=False), device=torch.device("cpu"),
                           gradient_checkpointing=False, precision="32-true")
    assert not any("stored in bf16" in line for line in lines)
    lines = apply_speedups(model, SpeedSettings(fused_lora=False), device=torch.device("cpu"),
                           gradient_checkpointing=False, precision="bf16-mixed")
    assert not any("stored in bf16" in line for line in lines)  # peft's own LoRA forward: left in float32
    apply_speedups(model, SpeedSettings(fp32_modules_in_bf16=False), device=torch.device("cpu"),
                   gradient_checkpointing=False)  # fuse
    assert fp32_modules_to(model, torch.bfloat16) == 4  # 2 encoder + 2 decoder blocks' wo base weights
    assert fp32_modules_to(model, torch.bfloat16) == 0
