"""Dequantize bitsandbytes 4-bit weights (NF4/FP4, with or without double quantization).

``dequantize_4bit`` is bitsandbytes' own kernel (one launch on CUDA; the reference). ``dequantize_4bit_torch``
computes the same values with plain torch ops, bit for bit: it is what a compiler can trace and fuse.
Packing (bitsandbytes' layout): two 4-bit codes per byte, the first element in the high nibble; one
absmax per ``blocksize`` elements; with double quantization the absmaxes themselves are 8-bit codes
with one float absmax per ``state2.blocksize`` of them, plus a float offset.
"""

from __future__ import annotations

from typing import Any

import torch


def quant_state_of(module: torch.nn.Module) -> Any | None:
    """The QuantState of a bitsandbytes ``Linear4bit`` (from the weight, or the module after FSDP flattening)."""
    state = getattr(module.weight, "quant_state", None)
    if state is None:
        state = getattr(module, "quant_state", None)
    return state


def dequantize_4bit(packed: torch.Tensor, state: Any, dtype: torch.dtype) -> torch.Tensor:
    """``[out, in]`` weight in ``dtype`` through bitsandbytes' kernel."""
    import bitsandbytes.functional as bnbf  # noqa: PLC0415 - optional dependency

    weight = bnbf.dequantize_4bit(packed, state)
    return weight if weight.dtype == dtype else weight.to(dtype)


def dequantize_4bit_torch(packed: torch.Tensor, state: Any, dtype: torch.dtype) -> torch.Tensor:
    """The same values as ``dequantize_4bit``, from plain torch ops."""
    inner = state.state2 if state.nested else None
    return dequantize_packed(
        packed, state.code, state.absmax, state.blocksize, tuple(state.shape), dtype,
        nested=None if inner is None else (inner.code, inner.absmax, inner.blocksize, state.offset),
    )


def dequantize_packed(
    packed: torch.Tensor,
    code: torch.Tensor,
    absmax: torch.Tensor,
    blocksize: int,
    shape: tuple[int, int],
    dtype: torch.dtype,
    nested: tuple[torch.Tensor, torch.Tensor, int, Any] | None = None,
) -> torch.Tensor:
    """Plain-torch dequantization from the constants themselves; ``nested``: (code2, absmax2, blocksize2, offset)."""
    flat = packed.reshape(-1)
    if flat.dtype != torch.uint8:  # bnb_4bit_quant_storage other than uint8 (FSDP): reinterpret the bytes
        flat = flat.view(torch.uint8)
    codes = torch.stack((flat >> 4, flat & 0xF), dim=-1).reshape(-1).long()
    if nested is not None:
        code2, absmax2, blocksize2, offset = nested
        absmax = code2[absmax.long()] * absmax2.repeat_interleave(blocksize2)[: absmax.numel()] + offset
    covered = absmax.numel() * blocksize
    if codes.numel() < covered:  # a last, partial block
        codes = torch.nn.functional.pad(codes, (0, covered - codes.numel()))
    values = code[codes[:covered]].view(-1, blocksize) * absmax.float()[:, None]
    return values.reshape(-1)[: shape[0] * shape[1]].view(shape).to(dtype)
