"""SummarizationProgressBar: plain lines where output is a file, and no "Epoch 0/-2" on step-bounded runs."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from lit_qsum.callbacks.progress import SummarizationProgressBar

DEMO = str(Path(__file__).resolve().parents[2] / "configs" / "demo.yaml")


def logging_model(base: type) -> object:
    """A DictBoringModel that logs ``train/loss`` to the progress bar and ``val/score`` once per validation."""

    class Model(base):
        def training_step(self, batch, batch_idx):
            out = super().training_step(batch, batch_idx)
            self.log("train/loss", out["loss"], prog_bar=True)
            return out

        def validation_step(self, batch, batch_idx):
            out = super().validation_step(batch, batch_idx)
            self.log("val/score", 0.25)
            return out

    return Model()


def test_plain_mode_prints_a_line_per_n_steps_and_per_validation(make_trainer, make_model, lightning_caplog) -> None:
    bar = SummarizationProgressBar(every_n_steps=4, plain=True)
    trainer = make_trainer([bar], max_steps=12, val_check_interval=6, enable_progress_bar=True,
                           num_sanity_val_steps=1)
    trainer.fit(logging_model(make_model))
    lines = [m for m in lightning_caplog.messages if m.startswith(("step ", "validation at"))]
    steps = [line for line in lines if line.startswith("step ")]
    assert [line.split(" | ")[0] for line in steps] == ["step 4/12 (33%)", "step 8/12 (67%)", "step 12/12 (100%)"]
    assert all(re.search(r"\| train/loss \d+\.\d{4} \| [\d.]+ steps/s \| ~\dm\d\ds left$", line) for line in steps), steps
    # one line per validation, none for the sanity check
    assert [line for line in lines if line.startswith("validation")] == [
        "validation at step 6: val/score 0.2500", "validation at step 12: val/score 0.2500"]
    assert bar.is_disabled  # no Rich rendering in plain mode


def test_step_bounded_runs_show_the_epoch_without_a_negative_total() -> None:
    bar = SummarizationProgressBar()
    bar._trainer = SimpleNamespace(max_epochs=-1)
    assert bar._get_train_description(0).strip() == "Epoch 0"
    bar._trainer = SimpleNamespace(max_epochs=3)
    assert bar._get_train_description(1).strip() == "Epoch 1/2"


def test_bad_argument_names_the_callback() -> None:
    with pytest.raises(ValueError, match="SummarizationProgressBar: every_n_steps must be >= 1, got 0"):
        SummarizationProgressBar(every_n_steps=0)


@pytest.mark.parametrize("extra, bar", [
    ([], SummarizationProgressBar),
    (["--trainer.enable_progress_bar", "false"], None),
    (["--trainer.callbacks+=lightning.pytorch.callbacks.TQDMProgressBar"], "TQDMProgressBar"),  # the user's own
])
def test_the_cli_adds_the_bar_unless_the_config_decides(tmp_path, monkeypatch, extra, bar) -> None:
    from lightning.pytorch.callbacks import ProgressBar

    from lit_qsum.cli import LitQsumCLI

    monkeypatch.chdir(tmp_path)
    cli = LitQsumCLI(args=["--config", DEMO, "--trainer.logger", "false", *extra], run=False)
    bars = [c for c in cli.trainer.callbacks if isinstance(c, ProgressBar)]
    if bar is None:
        assert bars == []
    else:
        [found] = bars
        assert type(found) is bar or type(found).__name__ == bar
