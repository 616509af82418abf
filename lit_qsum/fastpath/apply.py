"""Apply the fast-path settings to a built model, and undo the process-wide ones at teardown."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from lit_qsum import compat
from lit_qsum.fastpath.activations import bf16_outputs, bf16_t5_norms, swap_tanh_gelu
from lit_qsum.fastpath.attention import constant_zero_bias, contiguous_position_bias
from lit_qsum.fastpath.lora_linear import fuse_lora_layers, is_fused, make_traceable
from lit_qsum.fastpath.norms import fuse_rms_norms
from lit_qsum.settings import SpeedSettings

_saved_cudnn_sdp: bool | None = None


def apply_speedups(
    model: torch.nn.Module,
    speed: SpeedSettings,
    *,
    device: torch.device,
    gradient_checkpointing: bool,
    precision: str | None = None,
) -> list[str]:
    """Fuse LoRA layers and pick the attention backend; returns one log line per decision.

    ``precision`` is the Trainer's (``bf16-mixed``...): under bf16 the layers transformers keeps in float32 are
    stored in bf16 (``speed.fp32_modules_in_bf16``).
    """
    global _saved_cudnn_sdp  # noqa: PLW0603 - the backend flag is process-wide in torch itself
    report = []
    if speed.fused_lora:
        fused, skipped = fuse_lora_layers(model, keep_weight=gradient_checkpointing, dequant=speed.dequant,
                                          keep_copies=speed.adapter_copies)
        left = ", ".join(f"{n} ({why})" for why, n in skipped.items())
        report.append(f"fast path: {fused} LoRA layers fused" + (f"; left to peft: {left}" if left else ""))
    if speed.fp32_modules_in_bf16 and precision in BF16_PRECISIONS and (cast := fp32_modules_to(model, torch.bfloat16)):
        names = ", ".join(sorted(compat.keep_in_fp32_module_names(model.modules())))
        report.append(f"fast path: {cast} frozen float32 weights of {names} layers "
                      "stored in bf16 (bf16 autocast computes them in bf16 anyway)")
    if speed.fused_rms_norm and (norms := fuse_rms_norms(model, one_pass=speed.one_pass_rms_norm)):
        how = "one fused kernel with the weight and casts" if speed.one_pass_rms_norm else "one fused F.rms_norm"
        report.append(f"fast path: {norms} RMS norms run as {how} each")
    if speed.fused_gelu and (gelus := swap_tanh_gelu(model)):
        report.append(f"fast path: {gelus} tanh GELUs (gelu_new) run as one kernel each")
    if speed.bf16_activations and precision in BF16_PRECISIONS:
        outputs = bf16_outputs(model) if speed.fused_lora else 0
        norms_bf16 = bf16_t5_norms(model)
        if outputs or norms_bf16:
            report.append(f"fast path: bf16 activations: {outputs} LoRA layers (q/k/v, FFN input) hand on their bf16 "
                          f"result, {norms_bf16} T5 block norms output bf16")
    if speed.contiguous_attention_bias and (biased := contiguous_position_bias(model)):
        report.append(f"fast path: {biased} T5 position biases laid out contiguously (fused SDPA attention)")
    if speed.contiguous_attention_bias and gradient_checkpointing and (zeros := constant_zero_bias(model)):
        report.append(f"fast path: {zeros} T5 attention layers without a bias of their own use a constant zero bias")
    if speed.compile and device.type != "cuda":
        report.append("fast path: speed.compile skipped: it pays on CUDA GPUs only (a CPU compile takes minutes)")
    elif speed.compile:
        if speed.fused_lora:
            make_traceable(model)
        blocks = compile_blocks(model)
        report.append(f"fast path: {blocks} transformer blocks compiled with torch.compile (training only)")
    if device.type == "cuda" and not speed.cudnn_attention and torch.backends.cuda.cudnn_sdp_enabled():
        # cuDNN's attention builds an execution plan for every new (batch, length) shape, ~9 ms of host
        # time per call on H100/H200; length-grouped batches bring new shapes all the time. Flash and
        # memory-efficient attention don't plan.
        _saved_cudnn_sdp = True
        torch.backends.cuda.enable_cudnn_sdp(False)
        report.append("fast path: cuDNN attention off (flash / memory-efficient SDPA instead)")
    return report


BF16_PRECISIONS = ("bf16-mixed", "bf16-true", "bf16")


def fp32_modules_to(model: torch.nn.Module, dtype: torch.dtype) -> int:
    """Store the frozen float32 weights of the layers transformers keeps in float32 in ``dtype``; returns how many.

    transformers keeps T5's FFN output projection ``wo`` in float32 (unquantized) for float16 runs, where it
    overflows. Under bf16 autocast its GEMM runs in bf16 anyway: the float32 weight is cast on every call, and T5
    casts the FFN activations to float32 to match it. Stored in bf16 the results are the same, the weight takes half
    the memory, and both casts go. Trainable tensors (the LoRA adapters) stay float32. Layers left to peft's own
    LoRA forward (not fused) keep float32: peft adds the adapter's gradient to the input's in the input's dtype, so
    bf16 storage would round it differently.
    """
    names = compat.keep_in_fp32_module_names(model.modules())
    count = 0
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] not in names:
            continue
        if hasattr(module, "lora_A") and not is_fused(module):
            continue
        for param in module.parameters():
            if not param.requires_grad and param.dtype == torch.float32:
                param.data = param.data.to(dtype)
                count += 1
    return count


def restore_speedups() -> None:
    """Put the process-wide switches back as they were found."""
    global _saved_cudnn_sdp  # noqa: PLW0603
    if _saved_cudnn_sdp is not None:
        torch.backends.cuda.enable_cudnn_sdp(_saved_cudnn_sdp)
        _saved_cudnn_sdp = None


def compile_blocks(model: torch.nn.Module) -> int:
    """Compile every transformer block (the classes models list in ``_no_split_modules``) for training.

    Blocks of one kind share the compiled code (their weights and quantization constants are inputs,
    sizes are dynamic), so a 48-layer T5 compiles four graphs. A block in eval mode (validation's
    generation, with its growing key/value caches) runs eagerly.
    """
    classes = compat.no_split_module_classes(model.modules())
    count = 0
    for module in model.modules():
        if type(module).__name__ in classes and compat.compile_module_call(module, functools.partial(_train_only, module)):
            count += 1
    return count


def _train_only(module: torch.nn.Module, eager: Callable[..., Any]) -> Callable[..., Any]:
    """``module``'s call compiled while training, ``eager`` (its own call) otherwise."""
    compiled = torch.compile(eager, dynamic=True)

    def call(*args: Any, **kwargs: Any) -> Any:
        return compiled(*args, **kwargs) if module.training else eager(*args, **kwargs)

    return call
