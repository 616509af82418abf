"""The one entry point from the LightningModule to model building: probe, choose a backend, build.

The module hands over a ``ModelSpec`` and gets back a ready-to-train model; it never learns which
library built it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lit_qsum import compat
from lit_qsum.backends import hf
from lit_qsum.backends.choice import BackendDecision, BackendRequest, choose_backend
from lit_qsum.backends.peft_lora import apply_lora, enable_gradient_checkpointing
from lit_qsum.backends.probe import EnvFacts, probe_environment
from lit_qsum.backends.unsloth_backend import load_unsloth, unsloth_setting_blockers
from lit_qsum.data.tokenizer import load_tokenizer
from lit_qsum.errors import UserInputError
from lit_qsum.settings import LoraSettings, QuantizationSettings


@dataclass
class ModelSpec:
    """What to build; mirrors the LightningModule's model arguments."""

    model_name_or_path: str | None = None
    model_config: dict | None = None
    tokenizer: str | None = None
    backend: BackendRequest = "auto"
    lora: LoraSettings = field(default_factory=LoraSettings)
    quantization: QuantizationSettings = field(default_factory=QuantizationSettings)
    gradient_checkpointing: bool = False
    init_seed: int = 0
    max_seq_length: int = 2048


@dataclass
class LoadedModel:
    """A model ready to train, with what was decided on the way."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    task: hf.Task
    model_type: str
    decision: BackendDecision
    compute_dtype: torch.dtype
    facts: EnvFacts


def tokenizer_spec(spec: ModelSpec) -> str:
    """The tokenizer to load: explicit, else the checkpoint's own."""
    name = spec.tokenizer or spec.model_name_or_path
    if not name:
        raise UserInputError("set --model.tokenizer (a hub name, a path, or lit_qsum:demo) "
                             "when building from --model.model_config")
    return name


def resolve_checkpoint(spec: ModelSpec, tokenizer: PreTrainedTokenizerBase, device: torch.device | None = None):
    """(path, config) of what ``from_pretrained`` loads; random-init models are saved to the cache first (drawn on
    ``device`` where it is a GPU)."""
    if (spec.model_name_or_path is None) == (spec.model_config is None):
        raise UserInputError("set exactly one of --model.model_name_or_path and --model.model_config")
    if spec.model_config is not None:
        config = hf.config_from_dict(spec.model_config, tokenizer)
        path = str(hf.materialize_random_init(config, spec.init_seed, tokenizer, device=device))
        return path, config
    config = hf.load_config(spec.model_name_or_path)
    return spec.model_name_or_path, config


def load_model(
    spec: ModelSpec,
    *,
    device: torch.device,
    load_device: torch.device | None = None,
    num_devices: int = 1,
    facts: EnvFacts | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> LoadedModel:
    """Probe, choose the backend, load the base (4-bit where chosen) and add LoRA.

    ``device``: where training runs, which decides the backend and the compute dtype. ``load_device``: where the
    base is kept after loading, if elsewhere (the host, for a strategy that moves it to ``device`` piece by piece);
    a CUDA ``device`` still quantizes each weight (``compat.quantize_4bit_on``), so the 4-bit base is the one loading on
    ``device`` would give.
    ``tokenizer``: the one already loaded for ``tokenizer_spec(spec)`` (the data module's), else it is loaded here.
    """
    load_device = device if load_device is None else load_device
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(tokenizer_spec(spec))
    path, config = resolve_checkpoint(spec, tokenizer, device)
    task = hf.task_of(config)
    facts = facts or probe_environment(device.type)
    decision = choose_backend(
        spec.backend,
        facts,
        model_type=config.model_type,
        is_encoder_decoder=task == "seq2seq",
        device_type=device.type,
        num_devices=num_devices,
        unsloth_settings=unsloth_setting_blockers(spec.lora, spec.quantization),
    )
    compute_dtype = hf.resolve_compute_dtype(spec.quantization.bnb_4bit_compute_dtype, device.type)

    if decision.backend == "unsloth":
        model, _ = load_unsloth(
            path,
            lora=spec.lora,
            quant=spec.quantization,
            dtype=compute_dtype,
            max_seq_length=spec.max_seq_length,
            gradient_checkpointing=spec.gradient_checkpointing,
            seed=spec.init_seed,
        )
    elif decision.backend == "full":
        model = hf.load_base_model(path, config, quantize=None, dtype=torch.float32, device=device)
        if spec.gradient_checkpointing:
            enable_gradient_checkpointing(model)
    else:
        quantize = None
        if decision.backend == "qlora" and spec.quantization.load_in_4bit:
            quantize = hf.bnb_config(spec.quantization, compute_dtype)
        on_host = quantize is not None and load_device.type == "cpu"
        # quantized on the GPU all the same: bitsandbytes' CPU kernels give another 4-bit base (session 12)
        with compat.quantize_4bit_on(device) if on_host and device.type == "cuda" else contextlib.nullcontext():
            model = hf.load_base_model(path, config, quantize=quantize, dtype=compute_dtype, device=load_device)
        if on_host:
            keep_trainable_cpu_layout(model)
        devices = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # the same init_seed gives the same LoRA init
            torch.manual_seed(spec.init_seed)
            model = apply_lora(model, spec.lora, task, spec.gradient_checkpointing)
    return LoadedModel(model, tokenizer, task, config.model_type, decision, compute_dtype, facts)


def keep_trainable_cpu_layout(model: torch.nn.Module) -> None:
    """Stop bitsandbytes repacking 4-bit weights for CPU inference.

    On CPUs with AVX512-BF16, bitsandbytes 0.50 permanently repacks a ``Linear4bit`` weight on its first
    eval-mode, no-grad forward (validation) into a layout whose kernel has no backward: training after
    the first validation would then get no input gradients through that layer.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
