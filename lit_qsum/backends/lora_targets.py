"""Default LoRA targets: every attention and FFN linear of each architecture family."""

from __future__ import annotations

from torch import nn

from lit_qsum.errors import UserInputError

DEFAULT_TARGETS: dict[str, list[str]] = {
    "t5": ["q", "k", "v", "o", "wi", "wi_0", "wi_1", "wo"],
    "mt5": ["q", "k", "v", "o", "wi", "wi_0", "wi_1", "wo"],
    "umt5": ["q", "k", "v", "o", "wi", "wi_0", "wi_1", "wo"],
    "longt5": ["q", "k", "v", "o", "wi", "wi_0", "wi_1", "wo"],
    "bart": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
    "mbart": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
    "pegasus": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
    "marian": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
}
# Llama-family decoders (Llama, SOLAR, Mistral, Qwen, Gemma) share these names.
_DECODER_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def default_target_modules(model_type: str, model: nn.Module) -> list[str]:
    """Names of the linears to adapt, keeping only those present (T5 v1.0 has ``wi``, v1.1 ``wi_0/wi_1``)."""
    wanted = DEFAULT_TARGETS.get(model_type, _DECODER_TARGETS)
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    found = [t for t in wanted if t in present]
    if not found:
        raise UserInputError(
            f"no default LoRA targets found for model type {model_type!r}; "
            "set --model.lora.target_modules to the names of its linear layers"
        )
    return found
