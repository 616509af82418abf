"""Which backend builds the model: a pure function of the probed facts, so every branch is testable.

Order of preference: unsloth (fastest, decoder-only only) > qlora (peft + bitsandbytes 4-bit) > lora
(16/32-bit base) ; ``full`` fine-tuning only when asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from lit_qsum.backends.probe import EnvFacts
from lit_qsum.errors import UserInputError

Backend = Literal["unsloth", "qlora", "lora", "full"]
BackendRequest = Literal["auto", "unsloth", "qlora", "lora", "full"]

# Decoder-only architectures Unsloth's FastLanguageModel/FastModel patch (model_type of the HF config).
UNSLOTH_MODEL_TYPES = frozenset(
    {"llama", "mistral", "qwen2", "qwen3", "qwen3_moe", "gemma", "gemma2", "gemma3", "phi3", "cohere", "granite"}
)
MIN_UNSLOTH_GPU_GIB = 6.0
MIN_UNSLOTH_CUDA = (11, 8)


@dataclass(frozen=True)
class BackendDecision:
    """The chosen backend and, line by line, why."""

    backend: Backend
    requested: BackendRequest
    reasons: tuple[str, ...]

    def report(self) -> str:
        """Human-readable multi-line explanation, printed once at start."""
        lines = [f"backend: {self.backend} (requested: {self.requested})"]
        lines += [f"  - {r}" for r in self.reasons]
        return "\n".join(lines)


def _cuda_tuple(version: str | None) -> tuple[int, int] | None:
    if not version:
        return None
    major, _, minor = version.partition(".")
    try:
        return int(major), int(minor.split(".")[0] or 0)
    except ValueError:
        return None


def unsloth_blockers(
    facts: EnvFacts, model_type: str, is_encoder_decoder: bool, device_type: str, num_devices: int
) -> list[str]:
    """Every reason Unsloth can't run this model here; empty means it can."""
    blockers = []
    if is_encoder_decoder:
        blockers.append(
            f"Unsloth does not support encoder-decoder models ({model_type}); it patches decoder-only LLMs only"
        )
    elif model_type not in UNSLOTH_MODEL_TYPES:
        blockers.append(f"model type {model_type!r} is not one Unsloth supports ({', '.join(sorted(UNSLOTH_MODEL_TYPES))})")
    if facts.os != "Linux":
        blockers.append(f"Unsloth needs Linux, this is {facts.os}")
    if device_type != "cuda" or not facts.cuda_available:
        blockers.append("Unsloth needs a CUDA GPU, training runs on " + device_type)
    else:
        cuda = _cuda_tuple(facts.cuda_version)
        if cuda is None or cuda < MIN_UNSLOTH_CUDA:
            blockers.append(f"Unsloth needs CUDA >= 11.8, torch reports {facts.cuda_version}")
        if facts.gpu_total_gib is None or facts.gpu_total_gib < MIN_UNSLOTH_GPU_GIB:
            blockers.append(f"Unsloth needs a GPU with >= {MIN_UNSLOTH_GPU_GIB:g} GB, found {facts.gpu_total_gib} GiB")
    if num_devices > 1:
        blockers.append(f"Unsloth runs on one GPU only, this run uses {num_devices} devices")
    if facts.unsloth_version is None:
        blockers.append("unsloth is not installed (pip install 'lit-qsum[unsloth]')")
    return blockers


def choose_backend(
    requested: BackendRequest,
    facts: EnvFacts,
    *,
    model_type: str,
    is_encoder_decoder: bool,
    device_type: str,
    num_devices: int = 1,
    unsloth_settings: Sequence[str] = (),
) -> BackendDecision:
    """Pick the fastest backend the machine supports, or check that a forced one can run; raises if not.

    ``unsloth_settings``: the run's settings Unsloth can't honour (``unsloth_setting_blockers``), each naming its
    flag; they rule Unsloth out like the machine's facts do.
    """
    if requested in ("full", "lora"):
        return BackendDecision(requested, requested, (f"{requested} was requested with --model.backend",))

    reasons: list[str] = []
    if requested in ("auto", "unsloth"):
        blockers = unsloth_blockers(facts, model_type, is_encoder_decoder, device_type, num_devices)
        blockers += list(unsloth_settings)
        if not blockers:
            why = (
                f"Linux, CUDA {facts.cuda_version}, {facts.gpu_name} {facts.gpu_total_gib} GiB, "
                f"unsloth {facts.unsloth_version}, {model_type} is supported"
            )
            return BackendDecision("unsloth", requested, (why,))
        if requested == "unsloth":
            raise UserInputError(
                "--model.backend unsloth can't run here:\n  - "
                + "\n  - ".join(blockers)
                + "\nUse --model.backend qlora (peft + bitsandbytes 4-bit), or auto to pick the best available."
            )
        reasons += [f"not unsloth: {b}" for b in blockers]

    if facts.bitsandbytes_works:
        reasons.append(f"qlora: bitsandbytes {facts.bitsandbytes_version} runs 4-bit NF4 on {device_type}")
        return BackendDecision("qlora", requested, tuple(reasons))
    if requested == "qlora":
        raise UserInputError(
            f"--model.backend qlora can't run here: {facts.bitsandbytes_error}. "
            "Install bitsandbytes, or use --model.backend lora (16/32-bit base weights)."
        )
    reasons.append(f"not qlora: {facts.bitsandbytes_error}")
    reasons.append("lora: plain LoRA on 16/32-bit base weights")
    return BackendDecision("lora", requested, tuple(reasons))
