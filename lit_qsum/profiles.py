"""GPU profiles: the memory knobs each card class gets, from the measurements in benchmarks/results.

``lit-qsum fit --profile auto`` (or ``--profile rtx4080``) expands to these overrides on top of any
config. ``configs/<profile>.yaml`` are written from this table and ``configs/base.yaml`` by
``python -m lit_qsum.profiles`` (a test keeps them in step), so each card stays one self-contained file
that runs with one ``--config``.

Micro-batches come from benchmarks/results/2026-11-28-profile-batch-sizes.md (H200 capped per card
with set_per_process_memory_fraction): the largest QLoRA micro-batch of a t5-large-shaped model at
the worst case (encoder 512 / decoder 200 tokens) with gradient checkpointing, divided by ~3 and
rounded down to a multiple of 4. The margin covers beam-search validation, vocabularies far larger
than T5's 32k (mT5: 250k, whose logits alone take ~0.2 GB per sample) and allocator fragmentation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
    title: str = ""
    """First line of the card's config: what it is for."""
    assumes: str = ""
    """The memory the card's config assumes, for its header."""

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
    "h100": Profile(80, batch_size=64, accumulate_grad_batches=1, gradient_checkpointing=True, precision="bf16-mixed",
                    title="H100 80 GB profile: QLoRA (or Unsloth for Llama-family models), bf16, large micro-batches.",
                    assumes="Assumes ~78 GiB of usable GPU memory."),
    "rtx3090": Profile(24, batch_size=40, accumulate_grad_batches=1, gradient_checkpointing=True, precision="bf16-mixed",
                       title="RTX 3090 24 GB profile.",
                       assumes="Assumes a 24 GB card with ~23 GiB usable (desktop/CUDA context take the rest)."),
    "rtx4080": Profile(16, batch_size=32, accumulate_grad_batches=1, gradient_checkpointing=True, precision="bf16-mixed",
                       title="RTX 4080 16 GB profile.", assumes="Assumes a 16 GB card with ~15 GiB usable."),
    "rtx4070": Profile(12, batch_size=24, accumulate_grad_batches=1, gradient_checkpointing=True, precision="bf16-mixed",
                       title="RTX 4070 12 GB profile.", assumes="Assumes a 12 GB card with ~11 GiB usable."),
    "rtx4060": Profile(8, batch_size=12, accumulate_grad_batches=2, gradient_checkpointing=True, precision="bf16-mixed",
                       title="RTX 4060 8 GB profile.", assumes="Assumes an 8 GB card with ~7 GiB usable."),
    # the two extremes of the trade-off, for any card
    "low-memory": Profile(6, batch_size=1, accumulate_grad_batches=16, gradient_checkpointing=True,
                          precision="bf16-mixed", lora_rank=8,
                          title="Low-memory profile: micro-batch 1, accumulation 16, checkpointing, rank 8"
                                " — for 6 GB cards or long inputs.",
                          assumes="Assumes any CUDA GPU with >= 6 GB."),
    "throughput": Profile(24, batch_size=8, accumulate_grad_batches=2, gradient_checkpointing=False,
                          precision="bf16-mixed", lora_rank=32,
                          title="Throughput profile: micro-batch 8, accumulation 2, rank 32, no checkpointing"
                                " — for cards with room to spare.",
                          assumes="Assumes a 24 GB card or larger."),
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


def card_config(name: str, base: str) -> str:
    """The text of ``configs/<name>.yaml``: a header naming its command, then ``base`` (``configs/base.yaml``)
    after its own header, with the profile's flags and ``outputs/<name>`` written into their lines (comments kept)."""
    profile = PROFILES[name]
    lines = base.splitlines()
    body = lines[next(i for i, line in enumerate(lines) if not line.startswith("#")):]
    flags = [*profile.overrides(), "--trainer.default_root_dir", f"outputs/{name}"]
    for flag, value in zip(flags[::2], flags[1::2]):
        _set_line(body, flag.removeprefix("--").split("."), value)
    header = [
        f"# {profile.title}",
        f"#   lit-qsum fit --config configs/{name}.yaml",
        f"#   lit-qsum fit --config configs/{name}.yaml --data.train_path train.csv --data.val_path dev.csv"
        " --model.model_name_or_path gogamza/kobart-base-v2",
        f"# {profile.assumes} Values from benchmarks/results/2026-11-28-profile-batch-sizes.md (see lit_qsum/profiles.py);",
        f"# the same knobs apply on top of any config with --profile {name} (or --profile auto).",
        "# Written by `python -m lit_qsum.profiles` from configs/base.yaml and that table: edit those, not this file.",
    ]
    return "\n".join(header + body) + "\n"


def _set_line(lines: list[str], path: list[str], value: str) -> None:
    """Replace the value of the block-style YAML key ``path`` in ``lines`` in place, keeping its comment's column."""
    parents: list[str] = []
    for i, line in enumerate(lines):
        if not line.strip() or line.lstrip().startswith(("#", "- ")):
            continue
        depth = (len(line) - len(line.lstrip())) // 2
        key, sep, rest = line.strip().partition(":")
        parents = [*parents[:depth], key]
        if parents == path and sep:
            old, hash_, comment = rest.partition(" #")
            head = f"{'  ' * depth}{key}: {value}"
            width = len(f"{'  ' * depth}{key}:{old}")
            lines[i] = f"{head.ljust(width)} #{comment}" if hash_ else head
            return
    raise KeyError(f"{'.'.join(path)} is not a line of configs/base.yaml")


if __name__ == "__main__":
    configs = Path(__file__).resolve().parents[1] / "configs"
    if not (configs / "base.yaml").is_file():
        raise SystemExit(f"{configs / 'base.yaml'} not found: run this from a checkout (pip install -e .)")
    base_text = (configs / "base.yaml").read_text(encoding="utf-8")
    for card in PROFILES:
        (configs / f"{card}.yaml").write_text(card_config(card, base_text), encoding="utf-8")
        print(f"wrote configs/{card}.yaml")
