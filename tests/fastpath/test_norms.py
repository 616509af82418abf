"""Fused RMS norms (``speed.fused_rms_norm``): transformers' norm math, forward and backward, in every dtype mix."""

from __future__ import annotations

import copy

import pytest
import torch

from lit_qsum.fastpath import apply_speedups
from lit_qsum.fastpath.norms import fuse_rms_norms
from lit_qsum.settings import SpeedSettings
from tiny_lora_models import load_tiny, loss_and_grads, tiny_batch


def _norm(kind: str, weight_dtype: torch.dtype) -> torch.nn.Module:
    if kind == "t5":
        from transformers.models.t5.modeling_t5 import T5LayerNorm as Norm
    elif kind == "mt5":
        from transformers.models.mt5.modeling_mt5 import MT5LayerNorm as Norm
    else:
        from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm as Norm
    norm = Norm(48, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(48, generator=torch.Generator().manual_seed(3)))
    return norm.to(weight_dtype)


@pytest.mark.parametrize("kind", ["t5", "mt5", "qwen2"])
@pytest.mark.parametrize("weight_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("input_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("autocast", [False, True])
def test_the_fused_norm_computes_transformers_norm(kind, weight_dtype, input_dtype, autocast) -> None:
    plain = _norm(kind, weight_dtype)
    fused = copy.deepcopy(plain)
    assert fuse_rms_norms(fused) == 1
    x = (torch.randn(2, 5, 48, generator=torch.Generator().manual_seed(1)) * 3).to(input_dtype)
    upstream = torch.randn(2, 5, 48, generator=torch.Generator().manual_seed(2))
    results = []
    for norm in (plain, fused):
        xi = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = norm(xi)
        (out.float() * upstream).sum().backward()
        results.append((out, xi.grad, norm.weight.grad))
    (want, want_dx, want_dw), (got, got_dx, got_dw) = results
    assert got.dtype == want.dtype
    # float32 math in both; only the order of the mean's additions differs, and a bf16 output may round the other way
    tol = {"rtol": 1.6e-2, "atol": 1e-2} if want.dtype == torch.bfloat16 else {"rtol": 1e-5, "atol": 1e-5}
    torch.testing.assert_close(got, want, **tol)
    grad_tol = {"rtol": 1.6e-2, "atol": 2e-2} if torch.bfloat16 in (input_dtype, weight_dtype) else tol
    torch.testing.assert_close(got_dx, want_dx, **grad_tol)
    torch.testing.assert_close(got_dw, want_dw, **grad_tol)


def test_only_known_norm_classes_with_the_expected_attributes_are_fused() -> None:
    class T5LayerNorm(torch.nn.Module):  # same name, other code: no variance_epsilon
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(4))
            self.eps = 1e-6

    model = torch.nn.Sequential(T5LayerNorm(), torch.nn.LayerNorm(4), _norm("t5", torch.float32))
    assert fuse_rms_norms(model) == 1
    assert fuse_rms_norms(model) == 1  # idempotent: the same forward again


def tiny_t5_pair(checkpointing: bool) -> tuple[torch.nn.Module, torch.nn.Module, dict]:
    """The tiny T5 in 4-bit with LoRA (dropout 0.05), norm weights away from one, twice; and apply_speedups' settings."""
    _, plain = load_tiny("t5", "qlora", checkpointing, dropout=0.05)
    with torch.no_grad():  # a fresh T5's norm weights are ones, which would hide a weight the fused norm dropped
        for name, param in plain.named_parameters():
            if "layer_norm" in name:
                param.normal_(1.0, 0.3, generator=torch.Generator().manual_seed(len(name)))
    settings = {"device": torch.device("cpu"), "gradient_checkpointing": checkpointing, "precision": "bf16-mixed"}
    return plain, copy.deepcopy(plain), settings


@pytest.mark.parametrize("checkpointing", [False, True])
def test_qlora_t5_with_fused_norms_gives_the_loss_and_lora_gradients(checkpointing: bool) -> None:
    """The tiny T5 in 4-bit with LoRA (LoRA dropout 0.05 and T5's 0.1, bf16 autocast, as users train): the fused norms
    change the loss and the adapters' gradients only by float32 rounding."""
    plain, fused, settings = tiny_t5_pair(checkpointing)
    apply_speedups(plain, SpeedSettings(fused_rms_norm=False), **settings)
    # the two-pass fused norm (one-pass is on by default; its own test below)
    lines = apply_speedups(fused, SpeedSettings(one_pass_rms_norm=False), **settings)
    assert any("12 RMS norms" in line for line in lines), lines  # 2x2 encoder + 2x3 decoder + 2 final norms
    batch = tiny_batch("t5", plain.config.vocab_size)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want_loss, want = loss_and_grads(plain, batch, seed=5)  # one seed: the same dropout masks
        got_loss, got = loss_and_grads(fused, batch, seed=5)
    torch.testing.assert_close(got_loss, want_loss, rtol=1e-4, atol=1e-5)
    assert want
    for name, grad in want.items():
        torch.testing.assert_close(got[name], grad, rtol=2e-2, atol=1e-4, msg=name)


@pytest.mark.parametrize("kind", ["t5", "qwen2"])
@pytest.mark.parametrize(("weight_dtype", "input_dtype"), [(torch.bfloat16, torch.bfloat16), (torch.bfloat16, torch.float32),
                                                           (torch.float32, torch.float32)])
def test_the_one_pass_norm_is_within_one_rounding_of_transformers(kind, weight_dtype, input_dtype) -> None:
    """bf16 input and weight: one kernel, one rounding; other dtype mixes keep the two-pass forward (exact)."""
    plain = _norm(kind, weight_dtype)
    one_pass = copy.deepcopy(plain)
    assert fuse_rms_norms(one_pass, one_pass=True) == 1
    x = (torch.randn(2, 5, 48, generator=torch.Generator().manual_seed(1)) * 3).to(input_dtype)
    upstream = torch.randn(2, 5, 48, generator=torch.Generator().manual_seed(2))
    results = []
    for norm in (plain, one_pass):
        xi = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = norm(xi)
        (out.float() * upstream).sum().backward()
        results.append((out, xi.grad))
    (want, want_dx), (got, got_dx) = results
    assert got.dtype == want.dtype
    if torch.bfloat16 in (weight_dtype, input_dtype):
        # one bf16 rounding apart at most: |y| < 16 here, where a bf16 step is at most 2^-4
        torch.testing.assert_close(got, want, rtol=8e-3, atol=1e-2)
        torch.testing.assert_close(got_dx, want_dx, rtol=2e-2, atol=2e-2)
    else:
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    if weight_dtype == input_dtype == torch.bfloat16:
        assert not torch.equal(got, want)  # the one-pass path ran: one rounding, not two


def test_qlora_t5_with_one_pass_norms_gives_the_loss_and_lora_gradients() -> None:
    plain, one_pass, settings = tiny_t5_pair(checkpointing=True)
    apply_speedups(plain, SpeedSettings(one_pass_rms_norm=False), **settings)
    lines = apply_speedups(one_pass, SpeedSettings(one_pass_rms_norm=True), **settings)
    assert any("12 RMS norms run as one fused kernel with the weight" in line for line in lines), lines
    batch = tiny_batch("t5", plain.config.vocab_size)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want_loss, want = loss_and_grads(plain, batch, seed=5)
        got_loss, got = loss_and_grads(one_pass, batch, seed=5)
    torch.testing.assert_close(got_loss, want_loss, rtol=1e-3, atol=1e-4)
    assert want
    for name, grad in want.items():
        torch.testing.assert_close(got[name], grad, rtol=5e-2, atol=1e-3, msg=name)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_one_pass_norm_stays_in_bf16_under_cuda_autocast() -> None:
    """CUDA autocast runs rms_norm in float32; the one-pass norm calls the kernel below it, so bf16 stays bf16."""
    norm = _norm("t5", torch.bfloat16).cuda()
    fuse_rms_norms(norm, one_pass=True)
    x = torch.randn(4, 48, device="cuda", dtype=torch.bfloat16)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = norm(x)
    assert out.dtype == torch.bfloat16
    want = _norm("t5", torch.bfloat16).cuda()(x)
    torch.testing.assert_close(out, want, rtol=8e-3, atol=1e-2)
