"""What a new user reads: --help, typo hints, unknown commands, checkpoint paths, validate's step, ignored exports."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

from cli_runner import run_cli
from lit_qsum.cli import main

REPO = Path(__file__).resolve().parents[2]
DEMO = str(REPO / "configs" / "demo.yaml")


@pytest.fixture(scope="module")
def fit_help() -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main(["fit", "--help"])
    return out.getvalue()


def test_fit_help_shows_the_lora_fields_and_the_profile_flag(fit_help: str) -> None:
    for flag in ("--model.lora.rank", "--model.lora.alpha_pattern", "--model.quantization.bnb_4bit_quant_type",
                 "--model.generation.num_beams"):
        assert flag in fit_help, flag  # listed, not behind --model.lora.help
    assert "LoRA rank r. Higher: more capacity" in fit_help  # the settings' own docstrings
    head = "\n".join(fit_help.splitlines()[:40])
    assert "--profile auto|" in head and "flags you type win over it" in head


def test_val_path_help_says_what_none_means_with_your_own_data(fit_help: str) -> None:
    text = " ".join(fit_help.split())
    assert "None = the bundled dev.csv" not in text
    assert "with --data.train_path it must be set" in text


def run_error(args: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, cwd: Path) -> str:
    return run_cli(args, capsys, monkeypatch, cwd, stdout=False)


def test_a_mistyped_flag_gets_the_flag_it_resembles(tmp_path, capsys, monkeypatch) -> None:
    err = run_error(["fit", "--config", DEMO, "--model.lora.rnak", "8"], capsys, monkeypatch, tmp_path)  # README's example
    assert err.splitlines()[0] == ("lit-qsum: error: unrecognized arguments: --model.lora.rnak 8 "
                                   "(did you mean --model.lora.rank?)")


def test_an_unknown_command_lists_every_command(tmp_path, capsys, monkeypatch) -> None:
    err = run_error(["exprot", "--ckpt_path", "x.ckpt"], capsys, monkeypatch, tmp_path)
    assert err.strip() == ("lit-qsum: error: 'exprot' is not a lit-qsum command (did you mean export?); choose one of "
                           "fit, validate, test, predict, env, export, sweep (`lit-qsum --help` says what each does)")


def test_ckpt_path_to_a_folder_says_so_and_lists_its_checkpoints(tmp_path, capsys, monkeypatch) -> None:
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "best.ckpt").write_bytes(b"")
    err = run_error(["validate", "--config", DEMO, "--ckpt_path", str(tmp_path / "checkpoints"),
                     "--trainer.logger", "false"], capsys, monkeypatch, tmp_path)
    assert err.strip() == (f"lit-qsum: error: --ckpt_path {tmp_path / 'checkpoints'} is a folder; "
                           "give one checkpoint file in it (best.ckpt)")


def test_validate_reports_the_step_of_the_checkpoint_not_step_0() -> None:
    from types import SimpleNamespace

    from lit_qsum.callbacks.progress import SummarizationProgressBar

    module = SimpleNamespace(checkpoint_step=120)  # what on_load_checkpoint keeps from --ckpt_path
    validating = SimpleNamespace(global_step=0, state=SimpleNamespace(fn="validate"))
    fitting = SimpleNamespace(global_step=40, state=SimpleNamespace(fn="fit"))
    assert SummarizationProgressBar.validated_step(validating, module) == 120
    assert SummarizationProgressBar.validated_step(fitting, module) == 40  # a fit's own validations: its step


def test_exports_are_git_ignored() -> None:
    ignored = {line.strip() for line in (REPO / ".gitignore").read_text(encoding="utf-8").splitlines()}
    assert ignored & {"/exported/", "exported/", "/exported", "exported"}, "exported/ (the README's export folder)"
