"""FSDP for (Q)LoRA with Lightning: shard the frozen (4-bit) base across GPUs, keep the small adapter whole on each.

``QLoraFSDPStrategy`` is Lightning's ``FSDPStrategy`` with four changes, each for a reason:

- It shards the module's Hugging Face model (``pl_module.model``), not the LightningModule. Lightning runs
  ``training_step`` inside the root unit's forward, and a backward inside that forward (manual optimization, which
  OOM recovery needs) breaks FSDP's state machine (Lightning issues #19626 and #19685, open). Sharding the inner
  model makes every ``self.model(...)`` an ordinary FSDP forward and backward.
- The trainable (LoRA) parameters are left out of FSDP (``ignored_states``): only the frozen base, which is where
  the memory is, gets sharded. The adapter is replicated like under DDP and the module averages its gradients once
  per optimizer step (``lit_qsum.distributed.grad_sync``), so adapter weights, optimizer state and checkpoints are
  exactly those of one device or DDP: a checkpoint resumes under any strategy and any number of GPUs. (FSDP's own
  optimizer-state gathering also returned wrong ``exp_avg`` values for LoRA parameters on torch 2.13 / gloo.)
- The adapter's optimizer state is sharded (``shard_optimizer_state``, ZeRO-1, ``lit_qsum.distributed.zero``): each
  GPU keeps AdamW's moments for its share of the adapter and broadcasts its updated tensors after the step. The weights
  stay those of DDP bit for bit, and checkpoints gather the state into one device's layout, so the above holds.
- The auto-wrap policy needs the model (``qlora_auto_wrap_policy``): one unit per transformer block, named by the
  model's ``_no_split_modules`` (T5Block, BartEncoderLayer/BartDecoderLayer, LlamaDecoderLayer, ...), and a unit of
  its own for each leaf whose frozen weights have another dtype than the rest (T5 keeps ``wo`` in float32 beside
  bfloat16-stored 4-bit weights; FSDP flattens uniform dtypes only; under bf16 precision the module stores ``wo`` in
  bf16 first, ``speed.fp32_modules_in_bf16``, so it shards with its block). It refuses 4-bit weights stored as uint8 (FSDP
  shards floating tensors only: ``--model.quantization.bnb_4bit_quant_storage bfloat16``) and a mixed-precision
  parameter dtype other than that storage dtype (FSDP would cast the packed 4-bit bytes and corrupt them).

Each frozen block reshards right after its own backward (``reshard_frozen_units_in_backward``): FSDP waits for
the gradients of a frozen unit's inputs, and T5's and BART's decoder blocks share one input, the encoder's output.

Forward and backward all-gather each block on every rank, so ranks must run the same forwards: generation keeps
ranks stepping together (``generation_context``), evaluation gives every rank the same number of batches, and a
CUDA OOM stops the run instead of being recovered in place. Lightning allows its FSDP on CUDA only; this subclass
also runs on the CPU with gloo, which the tests use.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Literal

import torch
from lightning.pytorch.strategies import FSDPStrategy, Strategy
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torch.distributed.fsdp import BackwardPrefetch
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
from torch.optim import Optimizer
from torchmetrics import Metric
from typing_extensions import override

from lit_qsum import compat
from lit_qsum.distributed.zero import ShardedOptimizerState, sharding_of
from lit_qsum.errors import UserInputError
from lit_qsum.fastpath.lora_linear import unfuse_lora_layers
from lit_qsum.settings import SpeedSettings

_WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")


class QLoraFSDPStrategy(FSDPStrategy):
    """Lightning's FSDP sharding the frozen base of ``pl_module.model``; the adapter stays whole (module docstring)."""

    def __init__(
        self,
        block_classes: list[str] | None = None,
        shard_optimizer_state: bool = True,
        backward_prefetch: Literal["BACKWARD_PRE", "BACKWARD_POST"] | None = "BACKWARD_PRE",
        offload_activations: bool = True,
        offload_min_bytes: int = 1 << 20,
        load_on_cpu: bool = True,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            block_classes: Module class names that each become one FSDP unit; None = the model's ``_no_split_modules``.
            shard_optimizer_state: Each GPU keeps the optimizer state (AdamW's moments) of its share of the adapter
                only and broadcasts its updated tensors after each step (ZeRO-1, ``lit_qsum.distributed.zero``); the
                same training, checkpoints gathered into one device's layout. False: every GPU holds all of it.
            backward_prefetch: FSDP's backward prefetch (its default, ``BACKWARD_PRE``, gathers the next unit while
                the current one's backward runs: overlap for one more gathered unit per GPU); null: none, the least
                memory (t5-xl: ~0.04 GiB per GPU on the CPU model), with gathers no longer overlapped.
            offload_activations: With gradient checkpointing, what the backward keeps from the training forward
                outside the checkpointed blocks (each block's input, the loss's logits) waits in pinned host memory
                (``offloading_loss``): exact copies, so the same training; t5-xl at micro-batch 8:
                ~0.22 GiB per GPU less at the step's peak (CPU model; 0.20 measured on two H200s, 2026-11-30) for
                ~0.3 GiB each way over PCIe per micro-batch. Without checkpointing it would move every activation,
                so it is skipped.
            offload_min_bytes: Saved tensors smaller than this stay on the GPU (ids, masks, scalars: a copy costs
                more than it frees).
            load_on_cpu: Each process keeps the base in host memory while it loads, each weight 4-bit-quantized on
                its own GPU and handed back (``lit_qsum.compat.quantize_4bit_on``: the same 4-bit base as
                loading on the GPU), and FSDP moves each unit to its GPU as it shards it, so no GPU ever holds the
                whole 4-bit base: a model whose base does not fit one GPU still loads. t5-xl on two H200s
                (2026-11-30): 1.50 GiB per GPU while loading against 2.36 loading on the GPUs, ~16 s longer to load.
                False: each process loads the whole base on its GPU, then FSDP shards it (no host memory for the
                base; with True each process holds its 4-bit base in host memory until FSDP has sharded it).
            kwargs: Lightning's ``FSDPStrategy`` arguments (``sharding_strategy``, ``cpu_offload``, ``auto_wrap_policy``
                to replace ours, ...). ``state_dict_type`` must stay ``full``: checkpoints hold the adapter only.
        """
        if kwargs.get("state_dict_type", "full") != "full":
            raise UserInputError(
                "--trainer.strategy.init_args.state_dict_type must be 'full': lit-qsum checkpoints hold only the "
                "adapter, which is not sharded"
            )
        if block_classes is not None and not block_classes:
            raise UserInputError("--trainer.strategy.init_args.block_classes must name at least one class, or be null")
        kwargs["backward_prefetch"] = None if backward_prefetch is None else BackwardPrefetch[backward_prefetch]
        super().__init__(**kwargs)
        self.block_classes = block_classes
        self.shard_optimizer_state = shard_optimizer_state
        self.offload_activations = offload_activations
        if offload_min_bytes < 0:
            raise UserInputError(f"--trainer.strategy.init_args.offload_min_bytes must be >= 0, got {offload_min_bytes}")
        self.offload_min_bytes = offload_min_bytes
        self.load_on_cpu = load_on_cpu

    @override
    def _setup_model(self, model: nn.Module) -> nn.Module:
        inner = getattr(model, "model", None)
        if not isinstance(inner, nn.Module):
            return super()._setup_model(model)  # not a lit-qsum module: Lightning's own wrapping
        if isinstance(inner, FSDP):
            return model  # already sharded (fit, then validate/predict with the same trainer)
        trainable = [p for p in inner.parameters() if p.requires_grad]
        if not trainable or len(trainable) == len(list(inner.parameters())):
            raise UserInputError(
                "QLoraFSDPStrategy shards the frozen base of a LoRA/QLoRA model (--model.backend qlora or lora); "
                "with nothing frozen there is nothing for it to shard"
            )
        check_fsdp_dtypes(inner, self.mixed_precision_config)
        # the adapter is not FSDP's: replicated, on the device like under DDP (a 16/32-bit base may still be on the CPU)
        for module in inner.modules():
            if any(p.requires_grad for p in module.parameters(recurse=False)):
                module.to(self.root_device)
        kwargs = dict(self.kwargs)
        kwargs.setdefault("auto_wrap_policy", qlora_auto_wrap_policy(inner, self.block_classes))
        model.model = FSDP(
            inner,
            cpu_offload=self.cpu_offload,
            mixed_precision=self.mixed_precision_config,
            sharding_strategy=self.sharding_strategy,
            # Lightning passes the CUDA index; on the CPU (tests) FSDP needs the device itself or it refuses to start
            device_id=self.root_device.index if self.root_device.type == "cuda" else self.root_device,
            ignored_states=trainable,
            **kwargs,
        )
        units = reshard_frozen_units_in_backward(model.model)
        watched = reshard_root_after_its_own_backward(model.model)
        rank_zero_info(f"FSDP: {units} units, each resharded right after its own backward"
                       + (f"; the root after the backward of its {watched} own layers" if watched else ""))
        unfused = unfuse_own_units(model.model)
        if unfused:
            rank_zero_info(f"FSDP: {unfused} LoRA layer(s) whose base is an FSDP unit of its own run through peft, unfused")
        # FSDP moves only what it wraps; the module's metrics (ROUGE sums) must be on the device for their all-reduce
        for metric in (m for m in model.modules() if isinstance(m, Metric)):
            metric.to(self.root_device)
        return model

    # The adapter and its optimizer state are ordinary replicated tensors: save and restore them as Lightning does
    # for one device or DDP (FSDPStrategy's versions go through FSDP's sharded-state machinery).
    @property
    @override
    def lightning_restore_optimizer(self) -> bool:
        return True

    @override
    def setup_optimizers(self, trainer: Any) -> None:
        super().setup_optimizers(trainer)
        if not self.shard_optimizer_state or self.world_size < 2:
            return
        for optimizer in self.optimizers:
            share = ShardedOptimizerState(optimizer, self.global_rank, self.world_size, self.root_device).owned_share()
            rank_zero_info(f"FSDP: optimizer state sharded over {self.world_size} GPUs (ZeRO-1 for the adapter): "
                           f"rank 0 keeps {share:.0%} of it")

    @override
    def optimizer_state(self, optimizer: Optimizer) -> dict[str, Any]:
        zero = sharding_of(optimizer)
        if zero is not None:  # every rank takes part; rank 0 gets one device's layout, the others {}
            return zero.full_state_dict()
        return Strategy.optimizer_state(self, optimizer)

    @override
    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        return Strategy.load_checkpoint(self, self.broadcast(checkpoint_path), weights_only=weights_only)

    @override
    def load_model_state_dict(self, checkpoint: Mapping[str, Any], strict: bool = True) -> None:
        Strategy.load_model_state_dict(self, checkpoint, strict=strict)

    @override
    def load_optimizer_state_dict(self, checkpoint: Mapping[str, Any]) -> None:
        Strategy.load_optimizer_state_dict(self, checkpoint)
        for optimizer in self.optimizers:  # a checkpoint holds one device's whole state: keep this rank's share
            zero = sharding_of(optimizer)
            if zero is not None:
                zero.drop_foreign_state()


def load_device(strategy: Strategy, device: torch.device) -> torch.device:
    """Where the module loads the frozen base: the host under ``QLoraFSDPStrategy(load_on_cpu=True)`` (FSDP then moves
    each unit to ``device`` as it shards it), else ``device`` itself."""
    if isinstance(strategy, QLoraFSDPStrategy) and strategy.load_on_cpu:
        return torch.device("cpu")
    return device


def host_load_line(model: nn.Module) -> str:
    """The log line of ``load_on_cpu``: how much of the model waits in this process's host memory until FSDP shards it."""
    held = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()) if t.device.type == "cpu")
    return (f"FSDP: the base waits in host memory ({held / 2**30:.2f} GiB in this process) until FSDP moves each unit "
            "to its GPU as it shards it (--trainer.strategy.init_args.load_on_cpu false: load the whole base on each "
            "GPU first)")


def offloading_loss(
    strategy: Strategy, loss: Callable[[Any], torch.Tensor], *, checkpointing: bool, device: torch.device
) -> tuple[Callable[[Any], torch.Tensor], str | None]:
    """``loss`` (the training forward) with its saved tensors outside the checkpointed blocks offloaded to the host,
    where ``QLoraFSDPStrategy.offload_activations`` asks for it, and the log line saying what was decided.

    Inside a checkpointed block the checkpoint's own saved-tensor hooks take precedence (it saves nothing there), so
    what reaches these hooks is each block's inputs and the loss's tensors. The copies to pinned host memory and back
    are asynchronous on the current stream, which orders them before any later kernel that reuses the memory (torch's
    ``save_on_cpu`` copies synchronously: a host wait at every block of the forward).
    """
    if not isinstance(strategy, QLoraFSDPStrategy) or not strategy.offload_activations:
        return loss, None
    if not checkpointing:
        return loss, ("FSDP: offload_activations skipped: without gradient checkpointing it would move every "
                      "activation to the host (--model.gradient_checkpointing true)")
    pin, smallest = device.type == "cuda", strategy.offload_min_bytes
    # one host copy per tensor and forward: T5's and BART's decoder blocks all save the encoder's output (each through
    # its own alias, own_block_inputs), which would otherwise go to the host once per block
    copies: dict[tuple, tuple[weakref.ref, torch.Tensor]] = {}

    def pack(tensor: torch.Tensor) -> Any:
        if tensor.numel() * tensor.element_size() < smallest or (pin and tensor.device.type != "cuda"):
            return tensor
        base = tensor if tensor._base is None else tensor._base
        key = (id(base), tensor.storage_offset(), tuple(tensor.size()), tuple(tensor.stride()), tensor.dtype,
               tensor._version)
        known = copies.get(key)
        if known is not None and known[0]() is base:  # alive, so its id is not a later tensor's
            return tensor.device, known[1]
        host = torch.empty(tensor.size(), dtype=tensor.dtype, layout=tensor.layout, pin_memory=pin)
        host.copy_(tensor, non_blocking=pin)
        offloaded.copied_bytes += host.numel() * host.element_size()  # type: ignore[attr-defined]
        copies[key] = (weakref.ref(base), host)
        return tensor.device, host

    def unpack(packed: Any) -> torch.Tensor:
        if isinstance(packed, torch.Tensor):
            return packed
        where, host = packed
        return host.to(where, non_blocking=pin)

    def offloaded(batch: Any) -> torch.Tensor:
        try:
            with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
                return loss(batch)
        finally:
            copies.clear()  # the saved tensors keep their host copies; the next forward starts afresh

    offloaded.copied_bytes = 0  # type: ignore[attr-defined]  # what went to the host so far (tests)

    return offloaded, ("FSDP: what the backward keeps outside the checkpointed blocks (block inputs, the loss's "
                       "logits) waits in " + ("pinned host memory" if pin else "host memory"))


def no_split_modules(model: nn.Module) -> set[str]:
    """Class names of the transformer blocks Hugging Face models in ``model`` declare unsplittable."""
    return compat.no_split_module_classes(model.modules())


def own_block_inputs(model: nn.Module) -> int:
    """Give every transformer block (the model's ``_no_split_modules``) its own alias of the inputs that require grad;
    returns how many blocks.

    Run on every strategy, so one device, DDP and FSDP sum the encoder output's gradient in the same order (per
    decoder block, then over blocks) and train bitwise alike; FSDP also needs the aliases outside its units
    (``reshard_frozen_units_in_backward``). A view costs no copy and gives the same gradient up to that order.
    """
    names = no_split_modules(model)
    blocks = [m for m in model.modules() if type(m).__name__ in names]
    for block in blocks:
        block.register_forward_pre_hook(_own_grad_inputs, with_kwargs=True)
    return len(blocks)


def reshard_frozen_units_in_backward(model: nn.Module) -> int:
    """Let each frozen FSDP unit reshard right after its own backward, not at the end of a shared input's; returns how
    many units got the hook.

    FSDP reshards a unit whose parameters are all frozen once the gradients of its forward's inputs that require grad
    are complete (a multi-grad hook on those inputs: there is no gradient of its own to wait for). An input that every
    unit shares completes only when the last of them is done: T5's and BART's decoder blocks all take the encoder's
    output, so every decoder block stayed gathered until the whole decoder's backward was over (t5-xl: 24 blocks,
    about 1.1 GiB per GPU). A fresh alias of each such input per unit (``view_as``: no copy, the same gradient) makes
    each unit's inputs its own, complete as soon as that unit's backward is.
    """
    units = [m for m in model.modules() if isinstance(m, FSDP) and m is not model]
    for unit in units:
        unit.register_forward_pre_hook(_own_grad_inputs, with_kwargs=True)
    return len(units)


def speed_under(strategy: Strategy, speed: SpeedSettings) -> tuple[SpeedSettings, list[str]]:
    """The fast-path settings that apply under ``strategy``, and a log line per setting changed.

    Under this FSDP the steps run eagerly (no CUDA graphs) and a rank's memory is what FSDP is for, so the fused LoRA
    layers cast their adapter per call instead of keeping compute-dtype copies (``speed.adapter_copies``; the same
    values, so the same training): 0.066 GiB per GPU for t5-xl in bf16, measured on CPU processes
    (``benchmarks/results/2026-11-30-fsdp-memory-cpu.md``, prototype 4).
    """
    if not isinstance(strategy, QLoraFSDPStrategy) or not speed.adapter_copies:
        return speed, []
    return dataclasses.replace(speed, adapter_copies=False), [
        "fast path: speed.adapter_copies off under FSDP (adapters cast per call; less memory per GPU)"]


def reshard_root_after_its_own_backward(root: FSDP) -> int:
    """Let the root FSDP unit reshard once the backward of its own frozen layers is done, not at the end of the whole
    backward; returns how many of its layers are watched (0: nothing to do).

    FSDP1 keeps the root gathered from its forward to the end of the backward. T5's root holds the tied embedding /
    LM head (262 MB in bf16 for t5-xl) and the two final norms, whose backward comes first (LM head, decoder norm)
    or before the encoder blocks' (encoder norm), where a t5-xl step peaks; the embedding lookups need no backward
    (frozen weights, token ids). So each training forward notes the inputs that require grad of the root's own
    layers, and when the last of their gradients is computed the root reshards; FSDP's end-of-backward callback skips
    a handle already resharded, and the next forward gathers it again. BART's root also owns the encoder's
    ``layernorm_embedding``, whose backward comes last (its input requires grad for checkpointing), so there the root
    still reshards at the end. A counter, not ``register_multi_grad_hook(mode="all")``, which would hold every
    gradient until the last (CPU measurement: +43 MiB). Uses FSDP1's ``_runtime_utils._reshard``
    (``tests/distributed/test_fsdp_reshard.py`` pins it). Measured on CPU processes for a t5-xl-shaped model: 0.12 GiB
    less per rank at the step's peak (``benchmarks/results/2026-11-30-fsdp-memory-cpu.md``).
    """
    import torch.distributed.fsdp._runtime_utils as fsdp_runtime  # noqa: PLC0415 - private FSDP1 API, pinned by a test

    handle = getattr(root, "_handle", None)
    if handle is None or not handle.uses_sharded_strategy:  # NO_SHARD never reshards
        return 0
    nested = {id(m) for unit in root.modules() if isinstance(unit, FSDP) and unit is not root for m in unit.modules()}
    own = [m for m in root.modules() if id(m) not in nested and not isinstance(m, FSDP)
           and any(not p.requires_grad for p in m.parameters(recurse=False))]
    pending: list[torch.Tensor] = []

    def note_inputs(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if torch.is_grad_enabled():
            pending.extend(t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor) and t.requires_grad)

    def watch(module: nn.Module, args: Any, output: Any) -> None:
        if not pending:
            return
        left = [len(pending)]

        def arrived(_grad: torch.Tensor) -> None:
            left[0] -= 1
            if left[0] == 0:
                fsdp_runtime._reshard(root, handle, True)

        for tensor in pending:
            tensor.register_hook(arrived)
        pending.clear()

    for module in own:
        module.register_forward_pre_hook(note_inputs, with_kwargs=True)
    root.register_forward_hook(watch)
    return len(own)


def _own_grad_inputs(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple, dict]:
    def own(value: Any) -> Any:
        return value.view_as(value) if isinstance(value, torch.Tensor) and value.requires_grad else value

    return tuple(own(a) for a in args), {k: own(v) for k, v in kwargs.items()}


def unfuse_own_units(model: nn.Module) -> int:
    """Give peft's forward back to fused LoRA layers whose base is an FSDP unit of its own; returns how many.

    ``qlora_auto_wrap_policy`` makes an odd-dtype frozen leaf (T5's float32 ``wo``) its own unit. Such a layer must
    call that unit, which gathers its shards first; the fused forward reads the base weight directly, which outside
    the unit's forward is this rank's flat shard.
    """
    return unfuse_lora_layers(model, where=lambda layer: isinstance(getattr(layer, "base_layer", None), FSDP))


def qlora_auto_wrap_policy(
    model: nn.Module, block_classes: list[str] | None = None
) -> Callable[[nn.Module, bool, int], bool]:
    """FSDP auto-wrap policy for ``model``: its transformer blocks, plus frozen leaves of an odd dtype on their own."""
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
        return any(p.dtype != base_dtype for p in module.parameters(recurse=False) if not p.requires_grad)

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


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable parameters by name, as an unwrapped model names them (whole on every rank, also under FSDP)."""
    return {clean_name(n): p.detach() for n, p in model.named_parameters() if p.requires_grad}


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
