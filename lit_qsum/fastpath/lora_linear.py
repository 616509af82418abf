"""One autograd node per LoRA layer: ``y = x W^T + s * B(A(dropout(x)))`` with ``W`` dequantized on the fly.

peft's LoRA layer over a bitsandbytes ``Linear4bit`` runs, per call, the base module (quant-state
fix-ups, casts, ``MatMul4Bit``), a defensive clone, a dropout module, two ``nn.Linear`` modules under
autocast (each casting its float32 weight), a scale and an add: about a dozen launches and as many
autograd nodes, each with its Python around it. ``FusedLoraLinear`` does the same arithmetic as one
autograd node: dequantize (one kernel), the base GEMM, dropout, the adapter's down-projection, and the
up-projection added into the base output by the GEMM's epilogue (``addmm_``). Backward computes only
the gradients needed (never one for the frozen 4-bit weight) and, under gradient checkpointing, reuses
the weight dequantized by the recompute instead of dequantizing a third time (the recompute happens
layer by layer, so at most one layer's weight is held).

The math is peft's: the same dropout kernel (``native_dropout``, which ``nn.Dropout`` runs on GPUs, so
one seed gives one mask), the adapter weights cast to the compute dtype, products accumulated in float32
by the GEMMs. Results differ from peft's only by rounding order (tests/fastpath check loss and LoRA
gradients against peft on tiny models).

``fuse_lora_layers`` swaps the ``forward`` of each eligible peft layer (plain LoRA, one active adapter,
not merged; anything else falls back to peft's own forward at call time), so peft still owns the
adapter weights, saving, merging and loading.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable
from typing import Any

import torch

from lit_qsum import compat
from lit_qsum.fastpath.dequant import dequantize_4bit, dequantize_4bit_torch, dequantize_packed, quant_state_of

Dequantize = Callable[[torch.Tensor, Any, torch.dtype], torch.Tensor]


def _base_weight(weight: torch.Tensor, state: Any, dtype: torch.dtype, dequantize: Dequantize) -> torch.Tensor:
    if state is None:
        return weight if weight.dtype == dtype else weight.to(dtype)
    return dequantize(weight, state, dtype)


class FusedLoraLinear(torch.autograd.Function):
    """``x [..., in] -> [..., out]``; gradients for ``x``, ``lora_a [r, in]`` and ``lora_b [out, r]`` only.

    ``a`` and ``b`` are ``lora_a`` and ``lora_b`` in the compute dtype (``adapter_in``): the GEMMs read them, the
    gradients go to ``lora_a`` and ``lora_b``.
    """

    @staticmethod
    def forward(  # noqa: PLR0913 - one node takes everything the layer needs
        ctx: Any,
        x: torch.Tensor,
        lora_a: torch.Tensor,
        lora_b: torch.Tensor,
        a: torch.Tensor,
        b: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        state: Any,
        scaling: float,
        p: float,
        dtype: torch.dtype,
        out_dtype: torch.dtype,
        keep_weight: bool,
        dequantize: Dequantize,
    ) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if x2.dtype != dtype:
            x2 = x2.to(dtype)
        w = _base_weight(weight, state, dtype, dequantize)
        if p > 0.0:
            xd, mask = torch.ops.aten.native_dropout(x2, p, True)
        else:
            xd, mask = x2, None
        down = torch.mm(xd, a.t())
        y = torch.mm(x2, w.t()) if bias is None else torch.addmm(bias.to(dtype), x2, w.t())
        y.addmm_(down, b.t(), alpha=scaling)
        ctx.save_for_backward(xd, down, mask, a, b, w if keep_weight else None)
        ctx.weight, ctx.state, ctx.dequantize = (None if keep_weight else weight), state, dequantize
        ctx.scaling, ctx.p, ctx.dtype, ctx.x_shape, ctx.x_dtype = scaling, p, dtype, shape, x.dtype
        ctx.a_dtype, ctx.b_dtype = lora_a.dtype, lora_b.dtype
        y = y.view(*shape[:-1], y.shape[-1])
        return y if y.dtype == out_dtype else y.to(out_dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        xd, down, mask, a, b, w = ctx.saved_tensors
        need_x, need_a, need_b = ctx.needs_input_grad[:3]
        g = grad.reshape(-1, grad.shape[-1])
        if g.dtype != ctx.dtype:
            g = g.to(ctx.dtype)
        grad_x = grad_a = grad_b = None
        if need_b:
            grad_b = torch.mm(g.t(), down).to(ctx.b_dtype).mul_(ctx.scaling)
        if need_x or need_a:
            g_down = torch.mm(g, b)  # [n, r]: the gradient at the adapter's bottleneck, before scaling
            if need_a:
                grad_a = torch.mm(g_down.t(), xd).to(ctx.a_dtype).mul_(ctx.scaling)
            if need_x:
                if w is None:
                    w = _base_weight(ctx.weight, ctx.state, ctx.dtype, ctx.dequantize)
                through_adapter = torch.mm(g_down, a)
                if mask is None:
                    grad_x = torch.addmm(through_adapter, g, w, beta=ctx.scaling)  # the add in the GEMM's epilogue
                else:
                    # dropout's backward as its own kernel, which reads the bool mask as bool (vectorized), and the add
                    # in the base GEMM's epilogue. Mixing the bool mask into a bf16 op (a mul_, then addcmul_) made
                    # the kernel cast it per element, unrolled and unvectorized: once per LoRA layer and micro-batch,
                    # 3.7% of t5-large's GPU time and 6.8% of the Qwen2.5-1.5B shape's (H200 profiles, 2026-11-30)
                    dropped = torch.ops.aten.native_dropout_backward(through_adapter, mask, ctx.scaling / (1.0 - ctx.p))
                    del through_adapter
                    grad_x = torch.addmm(dropped, g, w)
                grad_x = grad_x.view(ctx.x_shape)
                if grad_x.dtype != ctx.x_dtype:
                    grad_x = grad_x.to(ctx.x_dtype)
        return grad_x, grad_a, grad_b, None, None, None, None, None, None, None, None, None, None, None


class _Plan:
    """What a fused layer reads on each call, found once when the layer is patched."""

    __slots__ = ("adapter", "lora_a", "lora_b", "dropout", "base", "four_bit", "keep_weight", "dequantize",
                 "keep_copies", "copies", "versions", "compute_dtype_out")

    def __init__(
        self, layer: torch.nn.Module, adapter: str, keep_weight: bool, dequantize: Dequantize, keep_copies: bool = True
    ) -> None:
        self.adapter = adapter
        self.lora_a = layer.lora_A[adapter].weight
        self.lora_b = layer.lora_B[adapter].weight
        self.dropout = layer.lora_dropout[adapter]
        self.base = layer.get_base_layer()
        self.four_bit = _is_linear4bit(self.base)
        self.keep_weight = keep_weight
        self.dequantize = dequantize
        self.keep_copies = keep_copies
        self.copies: tuple[torch.Tensor, torch.Tensor] | None = None  # (lora_a, lora_b) in the compute dtype
        self.versions: tuple[int, int] | None = None  # the weights' version counters when the copies were made
        self.compute_dtype_out = False  # return the compute dtype under autocast (fastpath.activations.bf16_outputs)


class CopyStats:
    """How often the adapter copies were remade inside a forward because the weights had changed since the last
    ``refresh_adapter_copies`` (a checkpoint load, a first call). During training the optimizer step's refresh keeps
    them current, which a CUDA graph's replay needs: it reads the copies without running this check."""

    lazy_refreshes = 0


def adapter_in(plan: _Plan, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The adapter's weights in ``dtype``: the layer's kept copies (remade if the weights changed since), or a cast.

    The copies are exactly the cast (one rounding of the same float32 values), made once per optimizer step instead
    of in every forward and checkpointing recompute: for t5-large's 432 LoRA layers, ~1.7k small kernels fewer per
    micro-batch.
    """
    a, b = plan.lora_a, plan.lora_b
    if a.dtype == dtype and b.dtype == dtype:
        return a, b
    if not plan.keep_copies:
        return a.to(dtype), b.to(dtype)
    copies, versions = plan.copies, (a._version, b._version)
    if copies is None or copies[0].dtype != dtype or copies[0].device != a.device:
        with torch.no_grad():
            plan.copies = copies = (a.detach().to(dtype), b.detach().to(dtype))
    elif plan.versions != versions:
        with torch.no_grad():
            copies[0].copy_(a)
            copies[1].copy_(b)
    else:
        return copies
    plan.versions = versions
    CopyStats.lazy_refreshes += 1
    return copies


def refresh_adapter_copies(plans: list[_Plan]) -> int:
    """Remake the copies of the layers whose adapter weights changed (after an optimizer step), in place, with one
    multi-tensor copy; returns how many layers. In place: a captured CUDA graph reads the copies at their addresses."""
    dst, src, stale = [], [], []
    for plan in plans:
        copies = plan.copies
        if copies is None:
            continue
        a, b = plan.lora_a, plan.lora_b
        if plan.versions != (a._version, b._version):
            dst += copies
            src += (a, b)
            stale.append(plan)
    if dst:
        with torch.no_grad():
            torch._foreach_copy_(dst, src)
        for plan in stale:
            plan.versions = (plan.lora_a._version, plan.lora_b._version)
    return len(stale)


def fused_plans(model: torch.nn.Module) -> list[_Plan]:
    """The plans of ``model``'s fused LoRA layers that keep adapter copies (what ``refresh_adapter_copies`` takes)."""
    return [m.__dict__["_lit_qsum_plan"] for m in model.modules()
            if is_fused(m) and m.__dict__["_lit_qsum_plan"].keep_copies]


def _is_linear4bit(module: torch.nn.Module) -> bool:
    try:
        from bitsandbytes.nn import Linear4bit  # noqa: PLC0415 - optional dependency
    except ImportError:
        return False
    return isinstance(module, Linear4bit)


def _use_peft(layer: torch.nn.Module, plan: _Plan, args: tuple, kwargs: dict) -> bool:
    """Calls the fast forwards leave to peft's own: extra arguments, adapters disabled, merged or switched."""
    return bool(args or kwargs) or not compat.lora_layer_runs_one_adapter(layer, plan.adapter)


def _dtypes(plan: _Plan, x: torch.Tensor) -> tuple[torch.dtype, torch.dtype]:
    """(compute dtype, output dtype) of a call, as peft's layer over this base gives them; both forwards use it."""
    device_type = x.device.type
    autocast = torch.is_autocast_enabled(device_type)
    if plan.four_bit:  # bitsandbytes computes in compute_dtype (else the input's) and returns the promoted dtype
        dtype = torch.get_autocast_dtype(device_type) if autocast else (plan.base.compute_dtype or x.dtype)
        return dtype, dtype if autocast and plan.compute_dtype_out else torch.promote_types(x.dtype, dtype)
    dtype = torch.get_autocast_dtype(device_type) if autocast else plan.base.weight.dtype
    return dtype, dtype


def _fused_forward(self: torch.nn.Module, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    plan: _Plan = self._lit_qsum_plan
    if _use_peft(self, plan, args, kwargs):
        return type(self).forward(self, x, *args, **kwargs)
    base = plan.base
    dtype, out_dtype = _dtypes(plan, x)
    state = quant_state_of(base) if plan.four_bit else None
    weight = base.weight.data if plan.four_bit else base.weight
    dropout = plan.dropout
    p = dropout.p if isinstance(dropout, torch.nn.Dropout) and dropout.training else 0.0
    keep = plan.keep_weight and torch.is_grad_enabled()
    a, b = adapter_in(plan, dtype)
    return FusedLoraLinear.apply(
        x, plan.lora_a, plan.lora_b, a, b, weight, base.bias, state, self.scaling[plan.adapter], p, dtype, out_dtype,
        keep, plan.dequantize,
    )


def eligible(layer: torch.nn.Module) -> str | None:  # noqa: PLR0911 (one return per reason)
    """Why ``layer`` can't be fused, or None if it can (plain LoRA on a Linear or 4-bit Linear)."""
    base = layer.get_base_layer()
    if not (type(base) is torch.nn.Linear or _is_linear4bit(base)):
        return f"base layer {type(base).__name__}"
    if getattr(layer, "fan_in_fan_out", False):
        return "fan_in_fan_out"
    adapters = list(layer.lora_A.keys())
    if len(adapters) != 1:
        return f"{len(adapters)} adapters"
    adapter = adapters[0]
    if adapter in getattr(layer, "lora_variant", {}):
        return "a LoRA variant (DoRA, aLoRA...)"
    if layer.lora_A[adapter].bias is not None or layer.lora_B[adapter].bias is not None:
        return "adapter bias"
    if layer.get_base_layer().bias is not None and layer.get_base_layer().bias.requires_grad:
        return "trainable base bias"
    return None


def fuse_lora_layers(
    model: torch.nn.Module, *, keep_weight: bool, dequant: str = "bitsandbytes", keep_copies: bool = True
) -> tuple[int, dict[str, int]]:
    """Swap peft LoRA layers' forward for the fused one; returns (fused, {reason: count} of those left alone)."""
    from peft.tuners.lora import LoraLayer  # noqa: PLC0415

    dequantize = dequantize_4bit if dequant == "bitsandbytes" else dequantize_4bit_torch
    fused, skipped = 0, {}
    for module in model.modules():
        if not isinstance(module, LoraLayer):
            continue
        reason = eligible(module)
        if reason is not None:
            skipped[reason] = skipped.get(reason, 0) + 1
            continue
        module._lit_qsum_plan = _Plan(module, next(iter(module.lora_A.keys())), keep_weight, dequantize, keep_copies)
        module.forward = types.MethodType(_fused_forward, module)
        fused += 1
    return fused, skipped


def is_fused(module: torch.nn.Module) -> bool:
    """Whether ``module`` is a LoRA layer that runs the fused forward (``fuse_lora_layers``)."""
    return "_lit_qsum_plan" in module.__dict__


def unfuse_lora_layers(model: torch.nn.Module, where: Callable[[torch.nn.Module], bool] | None = None) -> int:
    """Give fused layers (those ``where`` accepts; default all) their peft forward back; returns how many."""
    restored = 0
    for module in model.modules():
        if not is_fused(module) or (where is not None and not where(module)):
            continue
        for name in ("_lit_qsum_plan", "forward", "merge", "unmerge"):
            module.__dict__.pop(name, None)
        restored += 1
    return restored


# ---- the traceable variant, for torch.compile ------------------------------------------------------
class QuantTensors(torch.nn.Module):
    """A 4-bit layer's quantization constants as (non-persistent) buffers, so a compiler sees them as inputs.

    A bitsandbytes ``QuantState`` is a plain Python object: a compiler would guard on its identity and
    recompile for every layer. As buffers of a submodule, layers of one shape share one compiled graph.
    """

    def __init__(self, state: Any) -> None:
        super().__init__()
        self.blocksize = int(state.blocksize)
        self.out_features, self.in_features = (int(n) for n in state.shape)
        self.nested = bool(state.nested)
        self.register_buffer("absmax", state.absmax, persistent=False)
        self.register_buffer("code", state.code, persistent=False)
        if self.nested:
            self.blocksize2 = int(state.state2.blocksize)
            self.register_buffer("absmax2", state.state2.absmax, persistent=False)
            self.register_buffer("code2", state.state2.code, persistent=False)
            offset = torch.as_tensor(state.offset, dtype=torch.float32, device=state.absmax.device).reshape(1)
            self.register_buffer("offset", offset, persistent=False)

    def dequantize(self, packed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        nested = (self.code2, self.absmax2, self.blocksize2, self.offset) if self.nested else None
        shape = (self.out_features, self.in_features)
        return dequantize_packed(packed, self.code, self.absmax, self.blocksize, shape, dtype, nested)


def _traceable_forward(self: torch.nn.Module, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """Plain differentiable ops (a compiler derives and fuses the backward); same arithmetic as ``FusedLoraLinear``."""
    plan: _Plan = self._lit_qsum_plan
    if _use_peft(self, plan, args, kwargs):
        return type(self).forward(self, x, *args, **kwargs)
    base = plan.base
    dtype, out_dtype = _dtypes(plan, x)
    weight = base.lq_quant.dequantize(base.weight.data, dtype) if plan.four_bit else base.weight.to(dtype)
    x = x.to(dtype)
    dropout = plan.dropout
    down = torch.nn.functional.linear(dropout(x), plan.lora_a.to(dtype))
    bias = None if base.bias is None else base.bias.to(dtype)
    y = torch.nn.functional.linear(x, weight, bias)
    y = y + self.scaling[plan.adapter] * torch.nn.functional.linear(down, plan.lora_b.to(dtype))
    return y.to(out_dtype)


def make_traceable(model: torch.nn.Module) -> int:
    """Switch fused layers to the traceable forward (for ``torch.compile``); returns how many."""
    switched = 0
    for module in model.modules():
        plan = module.__dict__.get("_lit_qsum_plan")
        if plan is None:
            continue
        if plan.four_bit:
            if not hasattr(plan.base, "lq_quant"):
                plan.base.lq_quant = QuantTensors(quant_state_of(plan.base))
            # peft's merge and unmerge re-quantize the base: new packed bytes under a new quant state
            module.merge = _requantizing(module.merge, plan)
            module.unmerge = _requantizing(module.unmerge, plan)
        module.forward = types.MethodType(_traceable_forward, module)
        switched += 1
    return switched


def _requantizing(method: Callable[..., Any], plan: _Plan) -> Callable[..., Any]:
    """``method``, then the base's quantization constants copied again (the traceable forward reads them)."""

    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        result = method(*args, **kwargs)
        plan.base.lq_quant = QuantTensors(quant_state_of(plan.base))
        return result

    return call
