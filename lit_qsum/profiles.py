"""GPU profiles: the memory knobs each card class gets, from the measurements in benchmarks/results.

``lit-qsum fit --profile auto`` (or ``--profile rtx4080``) expands to these overrides on top of any
config; ``configs/<profile>.yaml`` carry the same values (a test keeps them in step).

Micro-batches come from benchmarks/results/2026-11-28-profile-batch-sizes.md (H200 capped per card
with set_per_process_memory_fraction): the largest QLoRA micro-batch of a t5-large-shaped model at
the worst case (encoder 512 / decoder 200 tokens) with gradient checkpointing, divided by ~3 and
rounded down to a multiple of 4. The margin covers beam-search validation, vocabularies far larger
than T5's 32k (mT5: 250k, whose logits alone take ~0.2 GB per sample) and allocator fragmentation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lit_qsum.errors import UserInputError


@dataclass(frozen=True)
class Profile:
    """Memory knobs of one card class."""

    card_gib: float
    batch_size: int
    accumulate_grad_batches: int
    gradient_checkpointing: bool
    precision: str
    lora_rank: int | None = None

    def overrides(self) -> list[str]:
        """LightningCLI flags that apply this profile."""
        flags = [
            "--data.batch_size", str(self.batch_size),
            "--data.eval_batch_size", str(self.batch_size),
            "--model.accumulate_grad_batches", str(self.accumulate_grad_batches),
            "--model.gradient_checkpointing", str(self.gradient_checkpointing).lower(),
            "--trainer.precision", self.precision,
        ]
        if self.lora_rank is not None:
            flags += ["--model.lora.rank", str(self.lora_rank), "--model.lora.alpha", str(2 * self.lora_rank)]
        return flags


PROFILES: dict[str, Profile] = {
    # measured max (t5-large, checkpointing): >=128 on 78 GiB, >=128 on 23, 104 on 15, 72 on 11, 42 on 7
    "h100": Profile(80, batch_size=64, accumulate_grad_batches=1, gradient_checkpointing=True, precision="bf16-mixed"),
    "rtx3090": Profile(24, batch_size=40, accumulate_grad_batches=1, gradient_checkpointing=True, precision="bf16-mixed"),
    "rtx4080": Profile(16, batch_size=32, accumulate_grad_batches=1, gradient_checkpointing=True, precision="bf16-mixed"),
    "rtx4070": Profile(12, batch_size=24, accumulate_grad_batches=1, gradient_checkpointing=True, precision="bf16-mixed"),
    "rtx4060": Profile(8, batch_size=12, accumulate_grad_batches=2, gradient_checkpointing=True, precision="bf16-mixed"),
    # the two extremes of the trade-off, for any card
    "low-memory": Profile(6, batch_size=1, accumulate_grad_batches=16, gradient_checkpointing=True,
                          precision="bf16-mixed", lora_rank=8),
    "throughput": Profile(24, batch_size=8, accumulate_grad_batches=2, gradient_checkpointing=False,
                          precision="bf16-mixed", lora_rank=32),
}
CARD_PROFILES = ("h100", "rtx3090", "rtx4080", "rtx4070", "rtx4060")


def detect_profile(total_gib: float | None) -> str:
    """The largest card profile whose memory fits in ``total_gib`` (the GPU's memory); low-memory below 8 GB."""
    if total_gib is None:
        raise UserInputError("--profile auto needs a CUDA GPU; on the CPU use --config configs/cpu.yaml")
    for name in CARD_PROFILES:  # largest first
        # cards report a little less than their nominal size (a "16 GB" card shows ~15.7 GiB)
        if total_gib >= PROFILES[name].card_gib * 0.9:
            return name
    return "low-memory"


def expand_profile_flag(argv: list[str]) -> tuple[list[str], str | None]:
    """Replace ``--profile NAME|auto`` in ``argv`` by the profile's flags; see ``apply_profile``."""
    argv, name, _, _ = apply_profile(argv)
    return argv, name


def apply_profile(argv: list[str]) -> tuple[list[str], str | None, list[str], list[str]]:
    """``argv`` with ``--profile NAME|auto`` replaced by the profile's flags, the profile's name, and two lists
    for the log: the profile's flags applied (``--data.batch_size 32``) and those left out because ``argv`` sets
    them itself.

    The profile goes on top of the ``--config`` files (it is placed after the last one) and under the flags the
    user typed: a profile flag whose key the user gives (or a parent of it: ``--model.lora`` covers
    ``--model.lora.rank``) is dropped, wherever the user's flag stands.
    """
    if "--profile" not in argv:
        return argv, None, [], []
    i = argv.index("--profile")
    if i + 1 >= len(argv):
        raise UserInputError("--profile needs a value: auto or one of " + ", ".join(PROFILES))
    name = argv[i + 1]
    if name == "auto":
        total = torch.cuda.get_device_properties(0).total_memory / 2**30 if torch.cuda.is_available() else None
        name = detect_profile(total)
    if name not in PROFILES:
        raise UserInputError(f"--profile {name!r} is not a profile; choose auto or one of " + ", ".join(PROFILES))
    rest = argv[:i] + argv[i + 2 :]
    given = {_flag_key(token) for token in rest if token.startswith("--")}
    flags = PROFILES[name].overrides()
    applied, left_out = [], []
    for flag, value in zip(flags[::2], flags[1::2]):
        key = _flag_key(flag)
        mine = any(key == k or key.startswith(k + ".") for k in given)
        (left_out if mine else applied).append((flag, value))
    configs = [j for j, token in enumerate(rest[:-1]) if token in ("--config", "-c")]
    at = configs[-1] + 2 if configs else len(rest)
    expanded = rest[:at] + [token for pair in applied for token in pair] + rest[at:]
    return expanded, name, [f"{f} {v}" for f, v in applied], [f"{f} {v}" for f, v in left_out]


def _flag_key(token: str) -> str:
    """``--data.batch_size=8`` or ``--trainer.callbacks+=x.yaml`` -> ``data.batch_size`` / ``trainer.callbacks``."""
    return token.split("=", 1)[0].removesuffix("+").removeprefix("--")
