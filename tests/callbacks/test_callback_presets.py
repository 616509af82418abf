"""Every preset in callbacks/ parses under ``--trainer.callbacks`` of a LightningCLI and builds what it names."""

import importlib
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from lightning.pytorch.callbacks import ModelSummary
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.demos.boring_classes import BoringDataModule, BoringModel

PRESETS = Path(__file__).resolve().parents[2] / "callbacks"


def _cli(tmp_path: Path, *args: str) -> LightningCLI:
    return LightningCLI(
        BoringModel,
        BoringDataModule,
        run=False,
        save_config_callback=None,
        seed_everything_default=False,
        args=[*args, "--trainer.logger=false", f"--trainer.default_root_dir={tmp_path}"],
    )


def _expected(preset: Path) -> list[tuple[type, dict[str, Any]]]:
    entries = yaml.safe_load(preset.read_text())
    expected = []
    for entry in entries:
        module, name = entry["class_path"].rsplit(".", 1)
        expected.append((getattr(importlib.import_module(module), name), entry.get("init_args", {})))
    return expected


def _assert_built(callbacks: list, preset: Path) -> None:
    for cls, init_args in _expected(preset):
        [built] = [c for c in callbacks if type(c) is cls]
        for arg, value in init_args.items():
            assert getattr(built, arg) == value, f"{preset.name}: {cls.__name__}.{arg}"


def test_presets_exist():
    assert {p.name for p in PRESETS.glob("*.yaml")} >= {"memory.yaml", "throughput.yaml", "early_stopping.yaml"}


@pytest.mark.parametrize("preset", sorted(PRESETS.glob("*.yaml")), ids=lambda p: p.name)
def test_preset_parses_as_trainer_callbacks(preset: Path, tmp_path: Path):
    assert preset.read_text().startswith("# "), "a preset opens with a comment saying what it does and how to run it"
    cli = _cli(tmp_path, "--trainer.callbacks", str(preset))
    _assert_built(cli.trainer.callbacks, preset)


def test_presets_compose_with_plus_equals(tmp_path: Path):
    cli = _cli(
        tmp_path,
        "--trainer.callbacks+=lightning.pytorch.callbacks.ModelSummary",
        f"--trainer.callbacks+={PRESETS / 'memory.yaml'}",
        f"--trainer.callbacks+={PRESETS / 'throughput.yaml'}",
    )
    assert any(isinstance(c, ModelSummary) for c in cli.trainer.callbacks)
    _assert_built(cli.trainer.callbacks, PRESETS / "memory.yaml")
    _assert_built(cli.trainer.callbacks, PRESETS / "throughput.yaml")


def test_preset_path_inside_a_config_is_relative_to_that_config(tmp_path: Path):
    configs = tmp_path / "configs"
    configs.mkdir()
    config = configs / "gpu.yaml"
    config.write_text(f"trainer:\n  callbacks: {os.path.relpath(PRESETS / 'memory.yaml', configs)}\n")
    cli = _cli(tmp_path, "--config", str(config), f"--trainer.callbacks+={PRESETS / 'throughput.yaml'}")
    _assert_built(cli.trainer.callbacks, PRESETS / "memory.yaml")
    _assert_built(cli.trainer.callbacks, PRESETS / "throughput.yaml")
