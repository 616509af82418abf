"""Build a decoder-only model with Unsloth's fused 4-bit LoRA kernels.

Imported only when the backend choice falls on Unsloth: importing it takes ~30 s and patches
transformers for the whole process.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lit_qsum.backends.lora_targets import default_target_modules
from lit_qsum.settings import LoraSettings, QuantizationSettings


def load_unsloth(
    path: str,
    *,
    lora: LoraSettings,
    quant: QuantizationSettings,
    dtype: torch.dtype,
    max_seq_length: int,
    gradient_checkpointing: bool,
    seed: int,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """FastLanguageModel in 4-bit with LoRA; Unsloth's own checkpointing offloads activations smartly."""
    from unsloth import FastLanguageModel  # noqa: PLC0415 - heavy, patches transformers

    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=path,
        max_seq_length=max_seq_length,
        dtype=dtype,
        load_in_4bit=quant.load_in_4bit,
    )
    targets = lora.target_modules or default_target_modules(model.config.model_type, model)
    extra = {"rank_pattern": dict(lora.rank_pattern)} if lora.rank_pattern else {}  # unsloth forwards None to peft
    model = FastLanguageModel.get_peft_model(
        model,
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        bias="none",
        use_gradient_checkpointing="unsloth" if gradient_checkpointing else False,
        random_state=seed,
        use_rslora=lora.use_rslora,
        **extra,
    )
    return model, tokenizer
