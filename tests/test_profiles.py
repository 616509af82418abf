"""GPU profiles: the card YAMLs are written from configs/base.yaml and the table, resolve as before and as
``--profile`` does; auto-detection picks by card memory."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from lit_qsum.errors import UserInputError
from lit_qsum.profiles import PROFILES, card_config, detect_profile, expand_profile_flag
from lit_qsum.settings import SpeedSettings

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# `lit-qsum fit --config configs/rtx4080.yaml --print_config` at 8c3df20, before the cards were written from base.yaml
RTX4080_BEFORE = Path(__file__).resolve().parent / "fixtures" / "rtx4080-resolved-8c3df20.yaml"


def _resolved(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *args: str) -> dict:
    import sys

    from lit_qsum.cli import main

    monkeypatch.setattr(sys, "argv", ["lit-qsum"])
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["fit", *args, "--print_config"])
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_card_yaml_is_written_from_base_and_the_table(name: str) -> None:
    base = (CONFIGS / "base.yaml").read_text(encoding="utf-8")
    assert (CONFIGS / f"{name}.yaml").read_text(encoding="utf-8") == card_config(name, base), (
        f"configs/{name}.yaml is out of step with configs/base.yaml or lit_qsum/profiles.py: "
        "run `python -m lit_qsum.profiles`")


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_card_resolves_as_before(name: str, capsys, monkeypatch) -> None:
    """What ``--config configs/<card>.yaml`` gives: main's rtx4080 config with the card's table values. The one
    intended change: every card now spells out the fast-path settings (``model.speed``) that only h100.yaml wrote;
    before, ``speed: null`` meant the same defaults (``SummarizationModule`` uses ``speed or SpeedSettings()``). Data
    options added since appear with their defaults."""
    card = _resolved(capsys, monkeypatch, "--config", str(CONFIGS / f"{name}.yaml"))
    p = PROFILES[name]
    before = yaml.safe_load(RTX4080_BEFORE.read_text(encoding="utf-8"))
    before["model"]["speed"] = dataclasses.asdict(SpeedSettings())
    before["data"]["group_by_target"] = True  # added since, on by default (two-part length grouping)
    before["data"]["target_pad_to_multiple_of"] = None  # added since: the same multiple as pad_to_multiple_of
    before["trainer"]["default_root_dir"] = f"outputs/{name}"
    before["trainer"]["precision"] = p.precision
    before["data"]["batch_size"] = before["data"]["eval_batch_size"] = p.batch_size
    before["model"]["accumulate_grad_batches"] = p.accumulate_grad_batches
    before["model"]["gradient_checkpointing"] = p.gradient_checkpointing
    if p.lora_rank is not None:
        before["model"]["lora"].update(rank=p.lora_rank, alpha=2 * p.lora_rank)
    assert card == before


@pytest.mark.slow  # two CLI parses per card, ~5 s each on 2 CPU cores; the text test above already ties cards to it
@pytest.mark.parametrize("name", sorted(PROFILES))
def test_base_with_the_profile_flag_resolves_as_the_card(name: str, capsys, monkeypatch) -> None:
    card = _resolved(capsys, monkeypatch, "--config", str(CONFIGS / f"{name}.yaml"))
    via_flag = _resolved(capsys, monkeypatch, "--config", str(CONFIGS / "base.yaml"), "--profile", name,
                         "--trainer.default_root_dir", f"outputs/{name}")
    assert card == via_flag


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
    [(79.1, "h100"), (139.8, "h100"), (23.7, "rtx3090"), (15.6, "rtx4080"), (11.7, "rtx4070"), (7.6, "rtx4060"),
     (5.8, "low-memory")],
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


def test_explicit_flags_win_over_the_profile() -> None:
    """``--profile rtx4080 --data.batch_size 8`` trains at 8: the profile sits between the configs and the flags."""
    argv, _ = expand_profile_flag(["fit", "--config", "x.yaml", "--profile", "rtx4080", "--data.batch_size=8",
                                   "--model.lora", "{rank: 4}", "--config", "y.yaml"])
    values = {argv[j]: argv[j + 1] for j in range(len(argv) - 1) if argv[j].startswith("--")}
    assert "--data.batch_size" not in values and "--data.batch_size=8" in argv  # the user's value alone
    assert values["--data.eval_batch_size"] == "32"  # the profile's, for what the user left unset
    assert argv.index("--data.eval_batch_size") > argv.index("y.yaml")  # on top of every config file


def test_profile_says_what_it_applied_and_what_the_flags_kept(capsys, monkeypatch) -> None:
    import sys

    import yaml

    from lit_qsum.cli import main

    demo = str(CONFIGS / "demo.yaml")
    monkeypatch.setattr(sys, "argv", ["lit-qsum"])
    with pytest.raises(SystemExit):
        main(["fit", "--config", demo, "--profile", "rtx4080", "--data.batch_size", "8", "--print_config"])
    out, err = capsys.readouterr()
    config = yaml.safe_load(out)
    assert config["data"]["batch_size"] == 8 and config["data"]["eval_batch_size"] == 32
    assert ("lit-qsum: profile rtx4080: applied --data.eval_batch_size 32, --model.accumulate_grad_batches 1, "
            "--model.gradient_checkpointing true, --trainer.precision bf16-mixed; "
            "your flags win over its --data.batch_size 32") in err
