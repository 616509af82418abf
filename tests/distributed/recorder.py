"""A callback that writes what each rank trained on and ended with, for the multi-process tests to compare."""

import faulthandler
import json
import os
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch
from lightning.pytorch.callbacks import Callback

from lit_qsum.micro_batch import find_oom_handler


class Recorder(Callback):
    """Per rank: the sample indices of every training batch, final sizes and counters, trainable weights."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.trained: list[list[int]] = []
        self.first_step: int | None = None
        self.start_weights: dict[str, torch.Tensor] = {}
        self.start_optimizer: dict[str, Any] = {}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # a hung collective shows as every rank's stack on stderr, then the rank exits (set by the tests)
        if os.environ.get("WATCHDOG_S"):
            faulthandler.dump_traceback_later(int(os.environ["WATCHDOG_S"]), exit=True, file=sys.stderr)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.first_step = trainer.global_step
        self.start_weights = {k: v.clone() for k, v in pl_module.trainable_state_dict().items()}
        state = trainer.optimizers[0].state
        self.start_optimizer = {"steps": [float(s["step"]) for s in state.values() if "step" in s]}

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.trained.append(batch["index"].tolist())

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer, pl_module, "fit")

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer, pl_module, "predict")

    def _write(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        rank = trainer.global_rank
        self.out_dir.mkdir(parents=True, exist_ok=True)
        datamodule = trainer.datamodule
        scaler = find_oom_handler(trainer)
        report = {
            "stage": stage,
            "world_size": trainer.world_size,
            "first_step": self.first_step,
            "global_step": trainer.global_step,
            "trained": self.trained,
            "micro_batch_limit": pl_module.engine.micro_batch.micro_batch_size,
            "accumulate_grad_batches": pl_module.engine.micro_batch.accumulate_grad_batches,
            "batch_size": datamodule.batch_size,
            "recoveries": getattr(scaler, "recoveries", None),
            "start_optimizer": self.start_optimizer,
            # what this rank's optimizer holds at the end (under FSDP's ZeRO-1: its share of the adapter's state)
            "optimizer_state_numel": sum(v.numel() for s in (trainer.optimizers[0].state.values() if trainer.optimizers
                                                              else ()) for v in s.values() if isinstance(v, torch.Tensor)),
            "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
        }
        (self.out_dir / f"{stage}-rank{rank}.json").write_text(json.dumps(report))
        weights = {k: v.detach().cpu() for k, v in pl_module.trainable_state_dict().items()}
        torch.save({"end": weights, "start": self.start_weights}, self.out_dir / f"{stage}-rank{rank}.pt")
