"""GPU profiles: YAMLs and --profile agree, auto-detection picks by card memory."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lit_qsum.errors import UserInputError
from lit_qsum.profiles import PROFILES, detect_profile, expand_profile_flag

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_profile_yaml_matches_the_table(name: str) -> None:
    cfg = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text(encoding="utf-8"))
    p = PROFILES[name]
    assert cfg["data"]["batch_size"] == p.batch_size
    assert cfg["model"]["accumulate_grad_batches"] == p.accumulate_grad_batches
    assert cfg["model"]["gradient_checkpointing"] == p.gradient_checkpointing
    assert cfg["trainer"]["precision"] == p.precision
    if p.lora_rank is not None:
        assert cfg["model"]["lora"]["rank"] == p.lora_rank


@pytest.mark.parametrize(
    ("gib", "expected"),
    [(79.1, "h100"), (139.8, "h100"), (23.7, "rtx3090"), (15.6, "rtx4080"), (11.7, "rtx4070"), (7.6, "rtx4060"), (5.8, "low-memory")],
)
def test_auto_detection_by_card_memory(gib: float, expected: str) -> None:
    assert detect_profile(gib) == expected


def test_auto_without_gpu_says_what_to_do() -> None:
    with pytest.raises(UserInputError, match="configs/cpu.yaml"):
        detect_profile(None)


def test_profile_flag_expands_after_configs() -> None:
    argv, name = expand_profile_flag(["fit", "--config", "x.yaml", "--profile", "rtx4060"])
    assert name == "rtx4060"
    assert argv[:3] == ["fit", "--config", "x.yaml"]
    assert argv[argv.index("--data.batch_size") + 1] == "12"
    with pytest.raises(UserInputError, match="not a profile"):
        expand_profile_flag(["fit", "--profile", "rtx9999"])


def test_microbatches_follow_the_measured_order() -> None:
    cards = ["h100", "rtx3090", "rtx4080", "rtx4070", "rtx4060"]
    sizes = [PROFILES[c].batch_size for c in cards]
    assert sizes == sorted(sizes, reverse=True)
