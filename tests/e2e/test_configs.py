"""Every YAML in configs/ parses and validates through the real CLI (LightningCLI --print_config)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from lit_qsum.cli import main

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_config_parses_with_print_config(config: Path, capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["lit-qsum"])
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(config), "--print_config"])
    assert exc.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"] and printed["data"] and printed["trainer"]


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_config_opens_with_its_launch_command(config: Path) -> None:
    first = config.read_text(encoding="utf-8").splitlines()[:4]
    assert any("lit-qsum " in line for line in first), f"{config.name} must open with the command that runs it"


def test_configs_exist() -> None:
    assert any(c.name == "demo.yaml" for c in CONFIGS)


def test_a_checkpoint_io_in_the_config_is_kept(tmp_path, monkeypatch) -> None:
    """lit-qsum adds its adapter-writing CheckpointIO only where the config names none (it used to replace them)."""
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    from lit_qsum.checkpoint_io import AdapterCheckpointIO
    from lit_qsum.cli import LitQsumCLI

    monkeypatch.chdir(tmp_path)
    demo = str(Path(__file__).resolve().parents[2] / "configs" / "demo.yaml")
    cli = LitQsumCLI(args=["--config", demo, "--trainer.logger", "false"], run=False)
    assert type(cli.trainer.strategy.checkpoint_io) is AdapterCheckpointIO
    cli = LitQsumCLI(args=["--config", demo, "--trainer.logger", "false", "--trainer.plugins",
                           '{"class_path": "lightning.pytorch.plugins.io.TorchCheckpointIO"}'], run=False)
    assert type(cli.trainer.strategy.checkpoint_io) is TorchCheckpointIO
