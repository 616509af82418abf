"""Find the largest training batch that fits, measured on the longest samples, before fit starts; then back off."""

import dataclasses
import math
from copy import deepcopy
from typing import Any

import lightning.pytorch as L
import torch
from lightning.fabric.utilities.data import sized_len
from lightning.pytorch.callbacks import BatchSizeFinder
from lightning.pytorch.loggers.logger import DummyLogger
from lightning.pytorch.utilities.memory import garbage_collection_cuda, is_oom_error
from lightning.pytorch.utilities.parsing import lightning_getattr, lightning_setattr
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from lightning_utilities.core.apply_func import apply_to_collection
from typing_extensions import override

from lit_qsum import compat
from lit_qsum.errors import UserInputError
from lit_qsum.micro_batch import micro_batch_state


class LongestBatchSizeFinder(BatchSizeFinder):
    """Lightning's ``BatchSizeFinder`` for summarization: probes with the longest samples, restores only what trials
    change, and keeps a safety margin.

    Every trial batch is the ``batch_size`` longest samples (the data module's ``probe_longest``), each trial starts
    from the same training state (only what trials change is copied to CPU and put back: LoRA weights, optimizer,
    scheduler, precision plugin, step state, data position, loop progress, RNG), and ``floor(found * (1 - margin))``
    (at least 1) is kept in both modes. Trials run without callbacks, loggers, validation or OOM recovery;
    ``steps_per_trial`` counts optimizer steps of one batch each. The size found replaces OOM-scaled sizes a resumed
    checkpoint brought. Fit only, single process. Why Lightning's own finder is not enough: ``docs/design.md``.

    Args:
        mode: ``power`` doubles until a size fails and keeps the last that fit; ``binsearch`` then bisects between.
        steps_per_trial: Optimizer steps per candidate size; 2 or more, so the optimizer state exists during a step.
        init_val: First batch size tried.
        max_trials: Most candidate sizes tried.
        batch_arg_name: Attribute holding the batch size (on the data module: ``batch_size``).
        margin: Fraction taken off the size found, for memory the trials did not see (fragmentation, other processes).
        max_val: Largest batch size tried.

    """

    def __init__(
        self,
        mode: str = "binsearch",
        steps_per_trial: int = 3,
        init_val: int = 2,
        max_trials: int = 25,
        batch_arg_name: str = "batch_size",
        margin: float = 0.1,
        max_val: int = 8192,
    ) -> None:
        if not 0.0 <= margin < 1.0:
            raise ValueError(f"LongestBatchSizeFinder: margin must be in [0, 1), got {margin}")
        for name, value in (("steps_per_trial", steps_per_trial), ("init_val", init_val), ("max_trials", max_trials)):
            if value < 1:
                raise ValueError(f"LongestBatchSizeFinder: {name} must be >= 1, got {value}")
        if max_val < init_val:
            raise ValueError(f"LongestBatchSizeFinder: max_val must be >= init_val ({init_val}), got {max_val}")
        # Lightning's margin would apply to binsearch only; ours is applied to the result of either mode
        super().__init__(mode, steps_per_trial, init_val, max_trials, batch_arg_name, margin=0.0, max_val=max_val)
        self.mode = self._mode
        self.steps_per_trial = steps_per_trial
        self.init_val = init_val
        self.max_trials = max_trials
        self.batch_arg_name = batch_arg_name
        self.margin = margin
        self.max_val = max_val
        self.found_batch_size: int | None = None

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit" and not hasattr(trainer.datamodule, "probe_longest"):
            rank_zero_warn(
                "LongestBatchSizeFinder: the data module has no `probe_longest` flag, so trials use the batches its "
                "train loader yields first, which may not be the longest."
            )

    @override
    def scale_batch_size(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.fast_dev_run:
            rank_zero_warn("LongestBatchSizeFinder: skipped, `fast_dev_run` is on.")
            return
        snapshot = _TrainingSnapshot(trainer, pl_module)
        trial_mode = _TrialMode(trainer, pl_module, self.steps_per_trial)
        initial = lightning_getattr(pl_module, self.batch_arg_name)
        final = initial
        try:
            self.found_batch_size = self._search(trainer, pl_module, snapshot, trial_mode)
            final = max(1, math.floor(self.found_batch_size * (1 - self.margin)))
        finally:
            # the data module's epoch position goes back at the size it was saved with (no "resuming with another
            # batch size" notice); the loader rebuilt on leaving trial mode then gets the size the run continues with
            lightning_setattr(pl_module, self.batch_arg_name, initial)
            snapshot.restore(datamodule=True)
            lightning_setattr(pl_module, self.batch_arg_name, final)
            trial_mode.leave()
            snapshot.restore_rng()  # rebuilding the loaders drew from it
        self.optimal_batch_size = final
        state = micro_batch_state(pl_module)
        if state is not None and state.micro_batch_size is not None:
            state.micro_batch_size = None  # the new size was measured to fit whole; drop OOM-scaled sizes
            state.accumulate_grad_batches = pl_module.hparams.get("accumulate_grad_batches", 1)
        rank_zero_info(
            f"LongestBatchSizeFinder: batch size {self.found_batch_size} fits the longest samples; with a margin of "
            f"{self.margin:.0%} training uses batch size {final} (was {initial})."
        )

    def _search(
        self, trainer: L.Trainer, pl_module: L.LightningModule, snapshot: "_TrainingSnapshot", trial_mode: "_TrialMode"
    ) -> int:
        fits, fails = 0, None  # largest size that fit, smallest that did not
        size = self.init_val
        for _ in range(self.max_trials):
            lightning_setattr(pl_module, self.batch_arg_name, size)
            compat.reset_train_and_val_loaders(trainer)  # the fit loop keeps its loader until told to
            dataset_size = sized_len(getattr(trainer.train_dataloader, "dataset", None)) or math.inf
            if self._trial(trainer, snapshot, trial_mode):
                fits = size
                if size >= min(self.max_val, dataset_size):
                    break
                upper = min(self.max_val, dataset_size)
                size = min(size * 2, upper) if fails is None else (fits + fails) // 2
                if self.mode == "power" and fails is not None:
                    break
            else:
                fails = size
                if self.mode == "power" and fits:
                    break
                size = (fits + fails) // 2
            if fails is not None and (fails - fits <= 1 or size in (0, fits)):
                break
        if fits == 0:
            raise UserInputError(
                f"LongestBatchSizeFinder: even batch size {fails} of the longest samples runs out of memory. Use "
                "shorter inputs (--data.encoder_max_len), --model.gradient_checkpointing true, a lower "
                "--model.lora.rank, or a smaller profile config such as configs/rtx4060.yaml."
            )
        return fits

    def _trial(self, trainer: L.Trainer, snapshot: "_TrainingSnapshot", trial_mode: "_TrialMode") -> bool:
        """Train ``steps_per_trial`` steps at the current size from the snapshot's state; False on an OOM."""
        snapshot.restore(datamodule=False)  # trials leave the epoch position alone (probe_longest); checked at the end
        trial_mode.prepare_trial()
        garbage_collection_cuda()
        loop = trainer.fit_loop
        try:
            loop.run()
        except RuntimeError as err:
            if not (isinstance(err, torch.cuda.OutOfMemoryError) or is_oom_error(err)):
                raise
            del err
            garbage_collection_cuda()
            return False
        return True

    @override
    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Fit only: evaluation batches have their own size (``--data.eval_batch_size``) and OOM path."""

    @override
    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Fit only."""

    @override
    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Fit only."""


class _TrainingSnapshot:
    """CPU copies of what training steps change, to put back after each batch-size trial."""

    def __init__(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.trainer, self.module = trainer, pl_module
        self.params = [(p, p.detach().to("cpu", copy=True)) for p in pl_module.parameters() if p.requires_grad]
        self.optimizers = [_cpu_copy(opt.state_dict()) for opt in trainer.optimizers]
        self.schedulers = [deepcopy(config.scheduler.state_dict()) for config in trainer.lr_scheduler_configs]
        self.precision = deepcopy(trainer.precision_plugin.state_dict())
        # the module's step counters: its engine's sizes and NaN/Inf counts, changed by every trial step
        engine = getattr(pl_module, "engine", None)
        self.engine_state = None if engine is None else (
            dataclasses.replace(engine.micro_batch), dataclasses.replace(engine.nonfinite)
        )
        datamodule = trainer.datamodule
        self.datamodule = deepcopy(datamodule.state_dict()) if datamodule is not None else None
        self.cpu_rng = torch.get_rng_state()
        self.cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None

    def restore(self, datamodule: bool) -> None:
        with torch.no_grad():
            for param, saved in self.params:
                param.copy_(saved)
                param.grad = None
        # load_state_dict may keep the given tensors (same device and dtype): hand it copies, the snapshot is reused
        for optimizer, state in zip(self.trainer.optimizers, self.optimizers):
            optimizer.load_state_dict(deepcopy(state))
        for config, state in zip(self.trainer.lr_scheduler_configs, self.schedulers):
            config.scheduler.load_state_dict(deepcopy(state))
        self.trainer.precision_plugin.load_state_dict(deepcopy(self.precision))
        if self.engine_state is not None:
            micro_batch, nonfinite = self.engine_state
            self.module.engine.micro_batch = dataclasses.replace(micro_batch)
            self.module.engine.nonfinite = dataclasses.replace(nonfinite)
            self.module.engine.discard_trial_steps()  # a trial's loss and NaN/Inf count are not the run's
        if datamodule and self.datamodule is not None:
            self.trainer.datamodule.load_state_dict(deepcopy(self.datamodule))
        self.restore_rng()

    def restore_rng(self) -> None:
        torch.set_rng_state(self.cpu_rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state_all(self.cuda_rng)


class _TrialMode:
    """Trainer settings for trials (no callbacks, loggers or validation; a few steps of one batch on the longest
    samples), and their restoration. Mirrors Lightning's own finder, on the fit loop's public attributes."""

    def __init__(self, trainer: L.Trainer, pl_module: L.LightningModule, steps_per_trial: int) -> None:
        self.trainer, self.module = trainer, pl_module
        loop = trainer.fit_loop
        self.loggers, self.callbacks = trainer.loggers, trainer.callbacks
        self.limits = trainer.limit_train_batches, trainer.limit_val_batches
        self.max_steps = loop.epoch_loop.max_steps
        self.loop_state = deepcopy(loop.state_dict())
        trainer.loggers = [DummyLogger()] if trainer.loggers else []
        trainer.callbacks = []  # OOM recovery and checkpointing must not act on trial steps
        trainer.limit_train_batches, trainer.limit_val_batches = 1.0, 0
        loop.epoch_loop.max_steps = steps_per_trial
        if hasattr(trainer.datamodule, "probe_longest"):
            trainer.datamodule.probe_longest = True

    def prepare_trial(self) -> None:
        """Loop progress as before the search, step counters at zero, whole batches one per optimizer step."""
        loop = self.trainer.fit_loop
        loop.load_state_dict(deepcopy(self.loop_state))
        loop.restarting = False
        # a resumed run's step counters would end the trial at once: count its steps from zero
        loop.epoch_loop.manual_optimization.optim_step_progress.reset()
        loop.epoch_loop.automatic_optimization.optim_progress.reset()
        loop.epoch_progress.reset()
        state = micro_batch_state(self.module)
        if state is not None:
            state.micro_batch_size = None  # no OOM-recovery splitting: a trial measures the whole batch
            state.accumulate_grad_batches = 1

    def leave(self) -> None:
        trainer, loop = self.trainer, self.trainer.fit_loop
        if hasattr(trainer.datamodule, "probe_longest"):
            trainer.datamodule.probe_longest = False
        trainer.loggers, trainer.callbacks = self.loggers, self.callbacks
        trainer.limit_train_batches, trainer.limit_val_batches = self.limits
        loop.epoch_loop.max_steps = self.max_steps
        loop.load_state_dict(deepcopy(self.loop_state))
        loop.restarting = False
        compat.reset_train_and_val_loaders(trainer)  # the epoch's own loader, at the size chosen
        loop.reset()


def _cpu_copy(state: Any) -> Any:
    return apply_to_collection(state, torch.Tensor, lambda t: t.detach().to("cpu", copy=True))
