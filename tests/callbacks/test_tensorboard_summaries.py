"""TensorBoardSummaries: the validation examples table (the HPARAMS session is checked end to end in test_cli_fit_predict)."""

from types import SimpleNamespace

import pytest

from lit_qsum.callbacks import TensorBoardSummaries


class _Experiment:
    def __init__(self) -> None:
        self.texts: list[tuple[str, str, int]] = []

    def add_text(self, tag: str, text: str, global_step: int) -> None:
        self.texts.append((tag, text, global_step))


@pytest.mark.parametrize("sanity_checking", [False, True])
def test_examples_table_after_each_validation_but_the_sanity_check(sanity_checking: bool) -> None:
    experiment = _Experiment()
    module = SimpleNamespace(logger=SimpleNamespace(experiment=experiment),
                             val_examples=[("a | b\nc", "ref", "pred")])
    trainer = SimpleNamespace(sanity_checking=sanity_checking, global_step=7)
    TensorBoardSummaries().on_validation_epoch_end(trainer, module)
    if sanity_checking:
        assert experiment.texts == []
    else:
        table = "| dialogue | reference | prediction |\n|---|---|---|\n| a \\| b<br>c | ref | pred |"
        assert experiment.texts == [("val/examples", table, 7)]


def test_no_examples_or_no_text_logger_writes_nothing() -> None:
    trainer = SimpleNamespace(sanity_checking=False, global_step=1)
    experiment = _Experiment()
    TensorBoardSummaries().on_validation_epoch_end(
        trainer, SimpleNamespace(logger=SimpleNamespace(experiment=experiment), val_examples=[])
    )
    TensorBoardSummaries().on_validation_epoch_end(trainer, SimpleNamespace(logger=None, val_examples=[("d", "r", "p")]))
    assert experiment.texts == []
