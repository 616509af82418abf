"""Write the validation examples table and the HPARAMS session that TensorBoard shows beside the scalars."""

from typing import Any

import lightning.pytorch as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from typing_extensions import override

from lit_qsum import compat


class TensorBoardSummaries(Callback):
    """TensorBoard summaries of a ``SummarizationModule`` run; the CLI adds one unless the config lists one.

    - After each validation (not the sanity check): ``val/examples``, a text table of the first examples' dialogue,
      reference and prediction (``--model.num_logged_examples`` of them, read from ``pl_module.val_examples``), with
      any logger whose ``experiment`` has ``add_text``.
    - At fit end, with a ``TensorBoardLogger``: the HPARAMS session, this run's settings (module and data module
      hyperparameters, ``pl_module.run_facts``) beside its final ``val/*`` scores. The run's logger is built with
      ``default_hp_metric=False`` (``lit_qsum.runs``), so Lightning writes no placeholder session first.
    """

    @override
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        examples = getattr(pl_module, "val_examples", None)
        experiment = getattr(pl_module.logger, "experiment", None)
        if not examples or trainer.sanity_checking or not hasattr(experiment, "add_text"):
            return
        rows = ["| dialogue | reference | prediction |", "|---|---|---|"]
        for dialogue, reference, prediction in examples:
            cells = [c.replace("|", "\\|").replace("\n", "<br>") for c in (dialogue, reference, prediction)]
            rows.append("| " + " | ".join(cells) + " |")
        experiment.add_text("val/examples", "\n".join(rows), global_step=trainer.global_step)

    @override
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        logger = pl_module.logger
        if not isinstance(logger, TensorBoardLogger):
            return
        final = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        if not final:
            return
        params: dict[str, Any] = {**dict(pl_module.hparams), **getattr(pl_module, "run_facts", {})}
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is not None:
            params.update({f"data.{k}": v for k, v in dict(datamodule.hparams).items()})
        # the metric values come from the val/* scalars already logged: the HPARAMS session alone
        compat.write_tensorboard_hparams(logger, params, final, trainer.global_step)
