"""Build a decoder-only model with Unsloth's fused 4-bit LoRA kernels.

Imported only when the backend choice falls on Unsloth: importing it takes ~30 s and patches
transformers for the whole process. This file itself imports no unsloth at module level, so
``unsloth_setting_blockers`` is cheap to call before the choice.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lit_qsum.backends.lora_targets import default_target_modules
from lit_qsum.errors import UserInputError
from lit_qsum.settings import LoraSettings, QuantizationSettings

# FastLanguageModel.from_pretrained builds its own 4-bit config (NF4, double quantization, packed uint8 storage,
# compute dtype = its ``dtype``) and takes no option for the rest: other values would be silently dropped.
UNSLOTH_4BIT = {"bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True, "bnb_4bit_quant_storage": "uint8"}


def unsloth_setting_blockers(lora: LoraSettings, quant: QuantizationSettings) -> list[str]:
    """The settings Unsloth can't honour, each naming its flag; empty means it honours them all."""
    del lora  # every LoRA field is passed through; load_unsloth checks that peft got the patterns
    if not quant.load_in_4bit:
        return []
    return [
        f"--model.quantization.{name} {_shown(getattr(quant, name))}: Unsloth loads 4-bit weights as "
        f"{name.removeprefix('bnb_4bit_')}={_shown(value)} only"
        for name, value in UNSLOTH_4BIT.items()
        if getattr(quant, name) != value
    ]


def _shown(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


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
    blockers = unsloth_setting_blockers(lora, quant)
    if blockers:  # choose_backend already refused these; a direct caller gets the same answer
        raise UserInputError("--model.backend unsloth: " + "; ".join(blockers))
    from unsloth import FastLanguageModel  # noqa: PLC0415 - heavy, patches transformers

    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=path,
        max_seq_length=max_seq_length,
        dtype=dtype,
        load_in_4bit=quant.load_in_4bit,
    )
    targets = lora.target_modules or default_target_modules(model.config.model_type, model)
    # passed only when set: unsloth forwards None to peft, which expects a dict
    patterns = {name: dict(value) for name, value in (("rank_pattern", lora.rank_pattern),
                                                     ("alpha_pattern", lora.alpha_pattern)) if value}
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
        **patterns,
    )
    # get_peft_model takes **kwargs: a version that drops one would train another adapter shape, silently
    config = getattr(model, "peft_config", {}).get("default")
    for name, wanted in patterns.items():
        if dict(getattr(config, name, None) or {}) != wanted:
            raise UserInputError(f"--model.lora.{name}: this unsloth version did not apply it; "
                                 "use --model.backend qlora (peft) for per-module patterns")
    return model, tokenizer
