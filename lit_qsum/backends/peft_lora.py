"""Wrap a Hugging Face model with peft LoRA adapters (used by the qlora and lora backends)."""

from __future__ import annotations

from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from transformers import PreTrainedModel

from lit_qsum.backends.lora_targets import default_target_modules
from lit_qsum.errors import UserInputError
from lit_qsum.settings import LoraSettings


def lora_config(lora: LoraSettings, model: PreTrainedModel, task: str) -> LoraConfig:
    """peft's LoraConfig from our settings; default targets depend on the architecture."""
    targets = lora.target_modules or default_target_modules(model.config.model_type, model)
    return LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        rank_pattern=dict(lora.rank_pattern),
        alpha_pattern=dict(lora.alpha_pattern),
        use_rslora=lora.use_rslora,
        bias="none",
        task_type=TaskType.SEQ_2_SEQ_LM if task == "seq2seq" else TaskType.CAUSAL_LM,
    )


def enable_gradient_checkpointing(model: PreTrainedModel) -> None:
    """Non-reentrant checkpointing: works with frozen 4-bit inputs without ``enable_input_require_grads``."""
    enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5.2x; the old name warns there
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False


def apply_lora(model: PreTrainedModel, lora: LoraSettings, task: str, gradient_checkpointing: bool) -> PeftModel:
    """Freeze the base, add LoRA adapters; adapters stay in float32 (peft's default) for stable updates."""
    config = lora_config(lora, model, task)
    if gradient_checkpointing:
        enable_gradient_checkpointing(model)
    try:
        return get_peft_model(model, config)
    except ValueError as err:
        raise UserInputError(f"--model.lora: peft rejected the LoRA config: {err}") from err
