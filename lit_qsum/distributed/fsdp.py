"""FSDP for (Q)LoRA with Lightning: a strategy that shards the model the module trains, and the helpers the module
needs around a sharded model (gathered adapter weights, generation, gradient clipping).

Why a subclass of Lightning's ``FSDPStrategy`` and not the plain one:

- Lightning wraps the whole LightningModule and runs ``training_step`` inside the root unit's forward; a backward
  inside that forward (manual optimization, which OOM recovery needs) breaks FSDP's state machine (Lightning issues
  #19626 and #19685, open). This strategy wraps the module's Hugging Face model (``pl_module.model``) instead, so
  ``training_step`` runs outside any FSDP forward and every ``self.model(...)`` is an ordinary FSDP forward and
  backward. Everything else (process group, mixed precision, optimizer state, checkpoint files) is Lightning's.
- The auto-wrap policy needs the model (``qlora_auto_wrap_policy``): one unit per transformer block, named by the
  model's ``_no_split_modules`` (T5Block, BartEncoderLayer/BartDecoderLayer, LlamaDecoderLayer, ...), and a unit of
  its own for each leaf that can't share a flat parameter with the frozen 4-bit base: LoRA A/B (trainable, so the
  frozen base needs no gradient buffers; what peft's ``fsdp_auto_wrap_policy`` does) and frozen weights of another
  dtype (T5 keeps ``wo`` in float32 beside bfloat16-stored 4-bit weights; FSDP flattens uniform dtypes only).
- It refuses what would fail late or silently: 4-bit weights stored as uint8 (FSDP shards floating tensors only:
  ``--model.quantization.bnb_4bit_quant_storage bfloat16``) and a mixed-precision parameter dtype other than that
  storage dtype (FSDP would cast the packed 4-bit bytes and corrupt them).

Lightning allows its FSDP on CUDA only; this subclass also runs on the CPU with gloo, which the tests use.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from lightning.pytorch.strategies import FSDPStrategy
from torch import nn
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
from torchmetrics import Metric
from typing_extensions import override

from lit_qsum.errors import UserInputError

_WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")


class QLoraFSDPStrategy(FSDPStrategy):
    """Lightning's FSDP, sharding ``pl_module.model`` with ``qlora_auto_wrap_policy`` (see the module docstring)."""

    def __init__(self, block_classes: list[str] | None = None, **kwargs: Any) -> None:
        """
        Args:
            block_classes: Module class names that each become one FSDP unit; None = the model's ``_no_split_modules``.
            kwargs: Lightning's ``FSDPStrategy`` arguments (``sharding_strategy``, ``cpu_offload``, ``auto_wrap_policy``
                to replace ours, ...). ``state_dict_type`` must stay ``full``: checkpoints hold the adapter only.
        """
        if kwargs.get("state_dict_type", "full") != "full":
            raise UserInputError(
                "--trainer.strategy.init_args.state_dict_type must be 'full': lit-qsum checkpoints hold only the "
                "trainable (LoRA) weights, gathered on every save, not shards of the frozen base"
            )
        if block_classes is not None and not block_classes:
            raise UserInputError("--trainer.strategy.init_args.block_classes must name at least one class, or be null")
        super().__init__(**kwargs)
        self.block_classes = block_classes

    @override
    def _setup_model(self, model: nn.Module) -> nn.Module:
        inner = getattr(model, "model", None)
        if not isinstance(inner, nn.Module):
            return super()._setup_model(model)  # not a lit-qsum module: Lightning's own wrapping
        if isinstance(inner, FSDP):
            return model  # already sharded (fit, then validate/predict with the same trainer)
        check_fsdp_dtypes(inner, self.mixed_precision_config)
        kwargs = dict(self.kwargs)
        kwargs.setdefault("auto_wrap_policy", qlora_auto_wrap_policy(inner, self.block_classes))
        model.model = FSDP(
            inner,
            cpu_offload=self.cpu_offload,
            mixed_precision=self.mixed_precision_config,
            sharding_strategy=self.sharding_strategy,
            device_id=self.root_device.index,
            **kwargs,
        )
        # FSDP moves only what it wraps; the module's metrics (ROUGE sums) must be on the device for their all-reduce
        for metric in (m for m in model.modules() if isinstance(m, Metric)):
            metric.to(self.root_device)
        return model


def no_split_modules(model: nn.Module) -> set[str]:
    """Class names of the transformer blocks Hugging Face models in ``model`` declare unsplittable."""
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or ())
    return names


def qlora_auto_wrap_policy(
    model: nn.Module, block_classes: list[str] | None = None
) -> Callable[[nn.Module, bool, int], bool]:
    """FSDP auto-wrap policy for ``model``: its transformer blocks, plus leaves that can't share the base's unit."""
    blocks = set(block_classes) if block_classes else no_split_modules(model)
    present = {type(m).__name__ for m in model.modules()}
    if not blocks & present:
        raise UserInputError(
            f"FSDP: found none of the transformer block classes {sorted(blocks) or '(the model lists none)'} in the "
            "model; set --trainer.strategy.init_args.block_classes to the class name of its layers"
        )
    frozen = Counter()
    for p in model.parameters():
        if not p.requires_grad and p.is_floating_point():
            frozen[p.dtype] += p.numel()
    base_dtype = frozen.most_common(1)[0][0] if frozen else None

    def policy(module: nn.Module, recurse: bool, nonwrapped_numel: int) -> bool:
        if recurse:
            return True  # always look inside; units are chosen on the way back up
        if type(module).__name__ in blocks:
            return True
        if next(module.children(), None) is not None:
            return False
        params = list(module.parameters(recurse=False))
        return any(p.requires_grad for p in params) or any(p.dtype != base_dtype for p in params)

    return policy


def check_fsdp_dtypes(model: nn.Module, mixed_precision: Any) -> None:
    """Stop before FSDP wraps 4-bit weights it can't shard, or would cast and corrupt."""
    storage = {p.dtype for p in model.parameters() if type(p).__name__ == "Params4bit"}
    if not storage:
        return
    if any(not dtype.is_floating_point for dtype in storage):
        raise UserInputError(
            f"FSDP shards floating-point tensors only, and the 4-bit weights are stored as {sorted(map(str, storage))}: "
            "set --model.quantization.bnb_4bit_quant_storage bfloat16 (the compute dtype)"
        )
    param_dtype = getattr(mixed_precision, "param_dtype", None)
    if param_dtype is not None and storage != {param_dtype}:
        raise UserInputError(
            f"--trainer.precision gives FSDP the parameter dtype {param_dtype}, but the 4-bit weights are stored as "
            f"{sorted(map(str, storage))}; FSDP would cast the packed 4-bit data and corrupt it. Use "
            "--trainer.precision bf16-mixed with --model.quantization.bnb_4bit_quant_storage bfloat16"
        )


def is_sharded(model: nn.Module | None) -> bool:
    """Whether ``model`` is FSDP-wrapped (by ``QLoraFSDPStrategy``)."""
    return isinstance(model, FSDP)


def clean_name(name: str) -> str:
    """A parameter name without FSDP's (and activation checkpointing's) wrapper prefixes."""
    for prefix in _WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def trainable_names(model: nn.Module) -> list[str]:
    """Names of the trainable parameters, as an unwrapped model names them."""
    return [clean_name(n) for n, p in model.named_parameters() if p.requires_grad]


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable parameters by (unwrapped) name; under FSDP gathered from every rank's shard, on the CPU.

    A collective under FSDP: every rank must call it (Lightning does: every rank builds the checkpoint dict).
    """
    if not is_sharded(model):
        return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    # The whole model is unsharded for a moment (the 4-bit base at its packed size), one copy per rank on the CPU;
    # gathering only the LoRA units would need FSDP's private flat-parameter bookkeeping.
    with FSDP.summon_full_params(model, writeback=False, offload_to_cpu=True):
        return {clean_name(n): p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@contextmanager
def generation_context(model: nn.Module) -> Iterator[dict[str, Any]]:
    """Around ``generate()``: yields extra generate kwargs; under FSDP, unshards the root unit's own parameters.

    ``generate`` calls the inner model, not the FSDP root's forward, so the root's own parameters (embeddings, LM
    head, final norms) would stay sharded; the block units unshard themselves in their forwards. Ranks finish
    generating at different lengths, so under FSDP they keep stepping together (``synced_gpus``) until all are done:
    every decoding step all-gathers each block on every rank.
    """
    if not is_sharded(model):
        yield {}
        return
    with FSDP.summon_full_params(model, recurse=False, writeback=False):
        yield {"synced_gpus": torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1}


def clip_grad_norm(model: nn.Module, max_norm: float) -> None:
    """Clip the global gradient norm of a sharded model (Lightning's FSDP precision plugin refuses norm clipping)."""
    model.clip_grad_norm_(max_norm)
