"""T5's attention bias, laid out so scaled-dot-product attention takes a fused kernel.

T5 adds a learned relative-position bias to every attention score. transformers computes it as a
``[1, heads, q, k]`` view of a permuted ``[q, k, heads]`` tensor and, for SDPA, merges it with the
padding mask by broadcasting; the merged mask inherits the permuted strides (``(.., 1, k * heads,
heads)``), and SDPA's memory-efficient kernel refuses a mask whose last dimension is not contiguous,
so every T5 attention fell back to the unfused math path (float32 GEMMs, separate softmax and
dropout kernels). A contiguous bias makes the merged mask contiguous: the same values, and the fused
kernel (seen on an H200, issue #16: attention-bound GPU time per step -25% on a 6+6-layer t5-large
width). transformers >= 5.2x makes the merged mask contiguous itself; this is then a no-op copy of a
small tensor per forward.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable
from typing import Any

import torch


def contiguous_position_bias(model: torch.nn.Module) -> int:
    """Make every T5-style ``compute_bias`` return a contiguous tensor; returns how many modules were changed."""
    changed = 0
    for module in model.modules():
        compute_bias = getattr(module, "compute_bias", None)
        if not getattr(module, "has_relative_attention_bias", False) or compute_bias is None:
            continue
        if "_lit_qsum_contiguous_bias" in module.__dict__:
            continue
        module.compute_bias = types.MethodType(_contiguous(type(module).compute_bias), module)
        module._lit_qsum_contiguous_bias = True
        changed += 1
    return changed


def _contiguous(compute_bias: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    @functools.wraps(compute_bias)
    def call(self: torch.nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
        return compute_bias(self, *args, **kwargs).contiguous()

    return call


def constant_zero_bias(model: torch.nn.Module) -> int:
    """T5 attention layers without a position bias of their own: build their zero bias as a constant; returns how many.

    Under gradient checkpointing transformers marks that zero tensor ``requires_grad`` (the old reentrant checkpoint
    needed an input that requires grad). lit-qsum checkpoints non-reentrantly, so the mark only adds a gradient of a
    constant to every backward, keeps SDPA on a kernel that can return a mask gradient, and under ``torch.compile``
    breaks the graph in every such block. Loss and parameter gradients are the same to rounding (SDPA may then take
    another kernel). Checkpointing itself is set on the blocks, not on these attention modules.
    """
    changed = 0
    for module in model.modules():
        if getattr(module, "has_relative_attention_bias", True) or not getattr(module, "gradient_checkpointing", False):
            continue
        module.gradient_checkpointing = False
        changed += 1
    return changed
