"""The fused LoRA layer computes what peft computes: same loss, same LoRA gradients, on tiny real models."""

from __future__ import annotations

import pytest
import torch

from lit_qsum.fastpath.dequant import dequantize_4bit, dequantize_4bit_torch
from lit_qsum.fastpath.lora_linear import FusedLoraLinear, fuse_lora_layers, unfuse_lora_layers
from tiny_lora_models import load_tiny, loss_and_grads, tiny_batch

bnb = pytest.importorskip("bitsandbytes")


def _quantized(out_features: int, in_features: int, quant_type: str, nested: bool) -> tuple[torch.Tensor, object, torch.Tensor]:
    weight = torch.randn(out_features, in_features)
    param = bnb.nn.Params4bit(weight, requires_grad=False, quant_type=quant_type, compress_statistics=nested)._quantize("cpu")
    return param.data, param.quant_state, weight


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("nested", [True, False])
@pytest.mark.parametrize("shape", [(96, 128), (64, 320), (40, 24)])
def test_torch_dequantize_matches_bitsandbytes_bit_for_bit(quant_type: str, nested: bool, shape: tuple[int, int]) -> None:
    torch.manual_seed(sum(shape))
    packed, state, weight = _quantized(*shape, quant_type, nested)
    reference = dequantize_4bit(packed, state, torch.float32)
    assert reference.shape == weight.shape
    assert torch.equal(dequantize_4bit_torch(packed, state, torch.float32), reference)
    # and it is a dequantization of that weight (NF4/FP4 error is a fraction of the block's absmax)
    assert (reference - weight).abs().max() < 0.6 * weight.abs().max()


@pytest.mark.parametrize(
    ("arch", "backend", "checkpointing", "dropout"),
    [
        ("t5", "qlora", True, 0.05),
        ("t5", "qlora", False, 0.0),
        ("bart", "qlora", True, 0.1),
        ("llama", "qlora", False, 0.05),
        ("t5", "lora", False, 0.05),
    ],
)
def test_fused_layers_give_peft_loss_and_lora_gradients(arch: str, backend: str, checkpointing: bool, dropout: float) -> None:
    loaded, model = load_tiny(arch, backend, checkpointing, dropout)
    batch = tiny_batch(arch, model.config.vocab_size)
    loss_ref, grads_ref = loss_and_grads(model, batch, seed=7)

    fused, skipped = fuse_lora_layers(model, keep_weight=checkpointing)
    assert fused > 0 and not skipped
    calls = []
    original_apply = FusedLoraLinear.apply
    FusedLoraLinear.apply = lambda *a: calls.append(1) or original_apply(*a)  # the fused op really runs
    try:
        loss, grads = loss_and_grads(model, batch, seed=7)
    finally:
        FusedLoraLinear.apply = original_apply
    assert len(calls) >= fused

    torch.testing.assert_close(loss, loss_ref, rtol=1e-5, atol=1e-6)
    assert grads.keys() == grads_ref.keys()
    assert any(g.abs().sum() > 0 for n, g in grads.items() if "lora_A" in n)
    for name in grads:
        torch.testing.assert_close(grads[name], grads_ref[name], rtol=1e-4, atol=1e-6, msg=name)

    assert unfuse_lora_layers(model) == fused
    loss_back, _ = loss_and_grads(model, batch, seed=7)
    torch.testing.assert_close(loss_back, loss_ref)


def test_fused_layers_in_bf16_autocast_stay_within_bf16_tolerance() -> None:
    _, model = load_tiny("t5", "qlora", True, 0.0)
    batch = tiny_batch("t5", model.config.vocab_size)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss_ref, grads_ref = loss_and_grads(model, batch, seed=1)
        fuse_lora_layers(model, keep_weight=True)
        loss, grads = loss_and_grads(model, batch, seed=1)
    torch.testing.assert_close(loss, loss_ref, rtol=2e-2, atol=2e-2)
    for name in grads:
        ref = grads_ref[name].float()
        rel = (grads[name].float() - ref).norm() / ref.norm().clamp_min(1e-12)
        assert rel < 5e-2, (name, float(rel))


def test_disabled_or_merged_adapters_fall_back_to_peft() -> None:
    _, model = load_tiny("t5", "lora", False, 0.0)
    model.eval()
    batch = tiny_batch("t5", model.config.vocab_size)
    with torch.no_grad():
        with model.disable_adapter():
            base = model(**batch).loss
        fuse_lora_layers(model, keep_weight=False)
        with model.disable_adapter():  # the fused forward must see the switch and give the base model
            fused_base = model(**batch).loss
        with_adapter = model(**batch).loss
    torch.testing.assert_close(fused_base, base)
    assert not torch.allclose(with_adapter, base)


def _peft_loss(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """The loss through peft's own forwards (the patched ones set aside for the call)."""
    saved = {m: m.__dict__.pop("forward") for m in list(model.modules()) if "_lit_qsum_plan" in m.__dict__}
    try:
        return model(**batch).loss
    finally:
        for module, forward in saved.items():
            module.forward = forward


@pytest.mark.parametrize("traceable", [False, True])
def test_fast_forwards_follow_merge_unmerge_and_a_switched_adapter(traceable: bool) -> None:
    from peft import LoraConfig

    from lit_qsum.fastpath.lora_linear import make_traceable

    _, model = load_tiny("t5", "qlora", False, 0.0)
    model.eval()
    batch = tiny_batch("t5", model.config.vocab_size)
    fuse_lora_layers(model, keep_weight=False)
    if traceable:
        make_traceable(model)
    with torch.no_grad():
        model.base_model.merge_adapter()  # peft re-quantizes the 4-bit base, twice
        model.base_model.unmerge_adapter()
        torch.testing.assert_close(model(**batch).loss, _peft_loss(model, batch))
        config = model.peft_config["default"]
        model.add_adapter("other", LoraConfig(r=4, target_modules=config.target_modules, init_lora_weights=False))
        model.set_adapter("other")  # fused for "default" only: "other" must run through peft
        torch.testing.assert_close(model(**batch).loss, _peft_loss(model, batch))


@pytest.mark.parametrize(("arch", "backend"), [("t5", "qlora"), ("bart", "qlora"), ("t5", "lora")])
def test_traceable_layers_give_peft_loss_and_lora_gradients(arch: str, backend: str) -> None:
    """The plain-ops forward that torch.compile traces (quantization constants as buffers), run eagerly."""
    from lit_qsum.fastpath.lora_linear import make_traceable

    _, model = load_tiny(arch, backend, True, 0.0)
    batch = tiny_batch(arch, model.config.vocab_size)
    loss_ref, grads_ref = loss_and_grads(model, batch, seed=2)
    fused, _ = fuse_lora_layers(model, keep_weight=True)
    assert make_traceable(model) == fused
    loss, grads = loss_and_grads(model, batch, seed=2)
    torch.testing.assert_close(loss, loss_ref, rtol=1e-5, atol=1e-6)
    for name in grads:
        torch.testing.assert_close(grads[name], grads_ref[name], rtol=1e-4, atol=1e-6, msg=name)
