"""T5's tanh GELU as one kernel, and T5/BART activations in bf16 where only bf16 work reads them."""

from __future__ import annotations

import copy

import pytest
import torch

from lit_qsum.fastpath import apply_speedups
from lit_qsum.fastpath.activations import swap_tanh_gelu
from lit_qsum.settings import SpeedSettings
from tiny_lora_models import load_tiny, loss_and_grads, tiny_batch

CPU = torch.device("cpu")


def test_the_swapped_gelu_computes_gelu_new() -> None:
    from transformers.activations import NewGELUActivation

    holder = torch.nn.Sequential(torch.nn.Linear(4, 4), NewGELUActivation())
    assert swap_tanh_gelu(holder) == 1 and swap_tanh_gelu(holder) == 0
    assert isinstance(holder[1], torch.nn.GELU) and holder[1].approximate == "tanh"
    x = (torch.randn(1000, dtype=torch.float64) * 4).float().requires_grad_()
    want = NewGELUActivation()(x)
    (want_dx,) = torch.autograd.grad(want.square().sum(), x)
    got = holder[1](x)
    (got_dx,) = torch.autograd.grad(got.square().sum(), x)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got_dx, want_dx, rtol=1e-5, atol=1e-5)


def _dtypes_seen(model: torch.nn.Module, batch: dict, leaves: tuple[str, ...]) -> dict[str, torch.dtype]:
    seen: dict[str, torch.dtype] = {}
    hooks = [m.register_forward_hook(lambda _m, _i, out, n=n: seen.update({n: out.dtype}))
             for n, m in model.named_modules() if n.endswith(leaves)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(**batch)
    for hook in hooks:
        hook.remove()
    return {leaf: next(dtype for n, dtype in seen.items() if n.endswith(leaf)) for leaf in leaves}


T5_LEAVES = ("layer.0.SelfAttention.q", "layer.0.SelfAttention.o", "DenseReluDense.wi_0", "DenseReluDense.wo",
             "layer.0.layer_norm", "encoder.final_layer_norm")


@pytest.mark.parametrize("on", [True, False])
def test_t5_hands_bf16_on_where_only_bf16_work_reads_it(on: bool) -> None:
    _, model = load_tiny("t5", "qlora", False, 0.05)
    batch = tiny_batch("t5", model.config.vocab_size)
    lines = apply_speedups(model, SpeedSettings(bf16_activations=on), device=CPU, gradient_checkpointing=False,
                           precision="bf16-mixed")
    assert any("bf16 activations: 26 LoRA layers" in line and "10 T5 block norms" in line for line in lines) == on
    seen = _dtypes_seen(model, batch, T5_LEAVES)
    half, full = torch.bfloat16, torch.float32
    assert seen["encoder.final_layer_norm"] == full  # the encoder's output keeps float32
    assert seen["layer.0.SelfAttention.o"] == half and seen["DenseReluDense.wo"] == half  # bf16 inputs either way
    for leaf in ("layer.0.SelfAttention.q", "DenseReluDense.wi_0", "layer.0.layer_norm"):
        assert seen[leaf] == (half if on else full), leaf


def test_bf16_activations_need_bf16_precision() -> None:
    _, model = load_tiny("t5", "qlora", False, 0.05)
    lines = apply_speedups(model, SpeedSettings(), device=CPU, gradient_checkpointing=False, precision="32-true")
    assert not any("bf16 activations" in line for line in lines)
    assert any("tanh GELUs" in line for line in lines)  # float32 math, so any precision


def test_a_deep_copy_runs_its_own_norms() -> None:
    _, model = load_tiny("t5", "qlora", False, 0.0)
    apply_speedups(model, SpeedSettings(), device=CPU, gradient_checkpointing=False, precision="bf16-mixed")
    twin = copy.deepcopy(model)
    norms = [m for n, m in twin.named_modules() if n.endswith("layer.0.layer_norm")]
    assert norms and all(norm.forward.__self__ is norm for norm in norms)


@pytest.mark.parametrize("arch", ["t5", "bart"])
def test_bf16_activations_stay_as_close_to_float32_as_bf16_autocast_is(arch: str) -> None:
    """Error against the float32 model (loss, every LoRA gradient), what users' configs run: QLoRA, LoRA dropout 0.05,
    the models' own dropout, checkpointing. With bf16 activations the error is bf16 autocast's own (peft's layers
    under autocast) for every gradient: within 1.25x of it. T5's loss moves more (its gated FFN rounds twice more): it
    must stay within 2e-3 relative, a quarter of one bf16 rounding step (0.18% against autocast's 0.03% here)."""
    _, base = load_tiny(arch, "qlora", True, 0.05)
    batch = tiny_batch(arch, base.config.vocab_size)
    want_loss, want = loss_and_grads(copy.deepcopy(base), batch, seed=3)

    def error(settings: SpeedSettings | None) -> tuple[float, float]:
        model = copy.deepcopy(base)
        if settings is not None:
            apply_speedups(model, settings, device=CPU, gradient_checkpointing=True, precision="bf16-mixed")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, grads = loss_and_grads(model, batch, seed=3)
        assert grads.keys() == want.keys()
        worst = max(float((grads[n] - want[n]).norm() / want[n].norm()) for n in want)
        return float((loss - want_loss).abs() / want_loss), worst

    peft_loss, peft_grads = error(None)  # peft's own layers under bf16 autocast
    loss_err, grad_err = error(SpeedSettings())
    assert 0 < peft_grads < 0.1  # the comparison sees bf16 rounding at all
    assert loss_err <= max(1.25 * peft_loss, 2e-3), (loss_err, peft_loss)
    assert grad_err <= 1.25 * peft_grads, (grad_err, peft_grads)
