"""Activations of T5 and BART between layers: in bf16 where only bf16 work reads them, and T5's GELU as one kernel.

Under bf16 autocast T5 and BART keep float32 norms and a float32 residual stream, so each layer after a norm gets a
float32 input. bitsandbytes' 4-bit layer (and the fused LoRA layer, which returns what peft's layer over it returns)
computes in bf16 and casts its result up to the input's float32. What reads that result casts it down again (the
attention, the next linear), or runs elementwise in float32 over the model's widest tensors: T5's gated FFN computes
``gelu_new(wi_0(x)) * wi_1(x)`` and its dropout in float32 over ``[tokens, d_ff]``, as a dozen kernels each way
(``gelu_new`` alone is eight), again in checkpointing's recompute. On an H200, t5-large at micro-batch 64 spends more
GPU time in those casts and float32 elementwise kernels than in its GEMMs (profile of 2026-11-30, session 10).

- ``fused_gelu`` (``speed.fused_gelu``): ``NewGELUActivation`` (``gelu_new``: T5 v1.1, flan-T5, mT5) becomes
  ``nn.GELU(approximate="tanh")``, the same formula as one kernel each way, computed in float32 (results agree to
  float32 rounding; in bf16, one rounding at the end instead of one per op).
- ``bf16_activations`` (``speed.bf16_activations``), under bf16 precision, T5 and BART only:
  - the fused LoRA layers whose output only feeds bf16 work (``q``, ``k``, ``v`` and the FFN's input projections
    ``wi``, ``wi_0``, ``wi_1`` for T5; ``q_proj``, ``k_proj``, ``v_proj``, ``fc1`` for BART) return their GEMM's
    bf16 result as it is. Attention casts its inputs to bf16 anyway, and BART's exact GELU and T5's ReLU round once
    either way (a kernel on bf16 computes in float32 and rounds once, as the float32 op followed by the next layer's
    cast does). T5's gated FFN rounds twice more: the activation and the gate's product are bf16 before the dropout;
  - T5's norms inside the blocks return bf16: only linears read them, and each casts its input to bf16, so the
    forward is the same. Backward sums the gradients of the linears that share a norm (``q``, ``k``, ``v``) in bf16
    instead of float32.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable

import torch

from lit_qsum.fastpath.lora_linear import is_fused

BF16_OUTPUT_LAYERS: dict[str, frozenset[str]] = {
    "t5": frozenset({"q", "k", "v", "wi", "wi_0", "wi_1"}),
    "bart": frozenset({"q_proj", "k_proj", "v_proj", "fc1"}),
}
"""Per family, the LoRA layers whose output only feeds bf16 work (attention, the FFN's activation)."""

FAMILY = {"t5": "t5", "mt5": "t5", "umt5": "t5", "longt5": "t5", "bart": "bart", "mbart": "bart"}
T5_NORMS = frozenset({"T5LayerNorm", "MT5LayerNorm", "UMT5LayerNorm", "LongT5LayerNorm"})
T5_NORM_OWNERS = frozenset({"T5LayerSelfAttention", "T5LayerCrossAttention", "T5LayerFF",
                            "MT5LayerSelfAttention", "MT5LayerCrossAttention", "MT5LayerFF",
                            "UMT5LayerSelfAttention", "UMT5LayerCrossAttention", "UMT5LayerFF"})


def swap_tanh_gelu(model: torch.nn.Module) -> int:
    """Replace every ``NewGELUActivation`` submodule by ``nn.GELU(approximate="tanh")``; returns how many."""
    try:
        from transformers.activations import NewGELUActivation  # noqa: PLC0415
    except ImportError:  # pragma: no cover - transformers is a dependency
        return 0
    count = 0
    for module in model.modules():
        for name, child in list(module.named_children()):
            if type(child) is NewGELUActivation:
                setattr(module, name, torch.nn.GELU(approximate="tanh"))
                count += 1
    return count


def family(model: torch.nn.Module) -> str | None:
    """``"t5"``, ``"bart"``, or None for a model whose activations this module leaves alone."""
    config = getattr(model, "config", None)
    return FAMILY.get(getattr(config, "model_type", None) or "")


def bf16_outputs(model: torch.nn.Module) -> int:
    """Mark the fused LoRA layers of ``BF16_OUTPUT_LAYERS`` to return the compute dtype; returns how many."""
    names = BF16_OUTPUT_LAYERS.get(family(model) or "", frozenset())
    count = 0
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in names and is_fused(module):
            module.__dict__["_lit_qsum_plan"].compute_dtype_out = True
            count += 1
    return count


def _to_autocast_dtype(forward: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]) -> Callable[..., torch.Tensor]:
    """``forward`` (a norm's unbound forward), its float32 result cast to bf16 under bf16 autocast. Unbound, so a deep
    copy of the model binds the copy's norm."""

    @functools.wraps(forward)
    def call(self: torch.nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
        out = forward(self, hidden_states)
        device_type = out.device.type
        if torch.is_autocast_enabled(device_type):
            dtype = torch.get_autocast_dtype(device_type)
            if dtype == torch.bfloat16 and out.dtype == torch.float32:
                return out.to(dtype)
        return out

    return call


def bf16_t5_norms(model: torch.nn.Module) -> int:
    """T5's norms inside the blocks (self-attention, cross-attention, FFN) return the autocast dtype under bf16
    autocast; returns how many. The encoder's and decoder's final norms keep float32 (the encoder's output and the
    head's input). Idempotent."""
    if family(model) != "t5":
        return 0
    count = 0
    for owner in model.modules():
        if type(owner).__name__ not in T5_NORM_OWNERS:
            continue
        norm = getattr(owner, "layer_norm", None)
        if norm is None or type(norm).__name__ not in T5_NORMS or "_lit_qsum_bf16_out" in norm.__dict__:
            continue
        norm.forward = types.MethodType(_to_autocast_dtype(norm.forward.__func__), norm)
        norm._lit_qsum_bf16_out = True
        count += 1
    return count
