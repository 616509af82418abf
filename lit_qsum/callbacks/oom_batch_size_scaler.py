"""Recover from CUDA out-of-memory errors mid-run: halve the micro-batch, double the accumulation, keep training.

The step engine catches the OOM, rolls back the failed chunk's gradients and calls this callback through the
``OOMHandler`` protocol (``lit_qsum.micro_batch``); what stays exact is in ``docs/design.md``.
"""

import gc
import math
import traceback
from typing import Any

import lightning.pytorch as L
import torch
from lightning.fabric.utilities.data import sized_len
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.types import STEP_OUTPUT
from typing_extensions import override

from lit_qsum import compat
from lit_qsum.errors import UserInputError
from lit_qsum.micro_batch import MicroBatchState, micro_batch_state

_SMALLER_SETUP = (
    "shorter inputs (--data.encoder_max_len), a lower LoRA rank (--model.lora.rank), activation recomputation "
    "(--model.gradient_checkpointing true), or a smaller profile config such as configs/rtx4060.yaml or the "
    "low-memory profile"
)


class OOMBatchSizeScaler(Callback):
    """On a CUDA OOM in training, halve the micro-batch and double gradient accumulation, so the effective batch stays.

    The module finds it as its ``OOMHandler`` (``lit_qsum.micro_batch``). What happens on an OOM of a chunk of ``n``
    samples (single process):

    - memory the failed step held is released (its traceback's frames, ``gc.collect()``, ``torch.cuda.empty_cache()``);
    - the micro-batch size in the module's ``engine.micro_batch`` (a ``MicroBatchState``) becomes ``n // 2``;
      ``accumulate_grad_batches`` and the micro-batches already counted in the open optimizer step are scaled by the
      same factor (2 when ``n`` is the micro-batch size), so micro-batch x accumulation is unchanged (exactly when
      the old size is a multiple of the new one: even sizes);
    - the data module's ``batch_size`` becomes ``n // 2`` from the next batch on, within the running epoch, and the
      fit loop is told the epoch now has more batches; ``eval_batch_size`` is pinned to its old value, so evaluation
      sizes change only through evaluation OOMs;
    - ``train/oom_recoveries``, ``train/micro_batch_size`` and ``train/accumulate_grad_batches`` are logged from then
      on, and a line says what changed.

    Below ``min_micro_batch`` it stops with a ``UserInputError`` saying what to change. An OOM while generating
    (validation/test/predict) halves only the evaluation batch; one sample that does not fit stops the run the same way.

    Resuming: the module's checkpoint carries the micro-batch size and ``accumulate_grad_batches`` (the module's
    values are the truth; this callback's saved copies are for reading); at fit start this callback makes the data
    module's ``batch_size`` match them and restores the shrunk ``eval_batch_size`` it saved. A
    ``LongestBatchSizeFinder`` runs before it (Lightning runs tuner callbacks first) and replaces resumed sizes.

    DDP: recovered in place too. ``SummarizationModule`` averages gradients itself once per optimizer step under DDP
    (``lit_qsum.distributed.grad_sync``), so forward and backward run no collective and the rank that ran out of memory
    can retry its samples in halves alone. Its smaller micro-batch is only pending until the optimizer step, where the
    ranks all-reduce it with the step's other flags; every rank then adopts the smallest one (``adopt_micro_batch``:
    the same halving, doubling and loader resize as above, at the same batch on every rank, so the ranks' samplers keep
    cutting the epoch alike). Until then each rank counts micro-batches in the shared unit, so all reach the optimizer
    step together; the gradient is that of the unsplit batches, as in a single process. Below ``min_micro_batch`` on
    any rank, all ranks stop together at that step with the advice. Under FSDP (collectives inside every forward and
    backward) a training OOM stops the run with the sizes to restart with. At fit start the resumed sizes are
    broadcast from rank 0, and after each evaluation the smallest ``eval_batch_size`` any rank reached is adopted by
    all (evaluation steps have no collectives under DDP, so ranks may split batches independently; under FSDP an
    evaluation OOM stops the run).

    Args:
        min_micro_batch: Smallest micro-batch to fall back to; an OOM below it stops the run with advice.
        verbose: Say on rank 0 what changed after every recovery.

    """

    def __init__(self, min_micro_batch: int = 1, verbose: bool = True) -> None:
        if min_micro_batch < 1:
            raise ValueError(f"OOMBatchSizeScaler: min_micro_batch must be >= 1, got {min_micro_batch}")
        self.min_micro_batch = min_micro_batch
        self.verbose = verbose
        self.recoveries = 0
        self.eval_recoveries = 0
        # mirrors of the sizes in force, for the checkpoint and for reading; the module's own values are the truth
        self.micro_batch_size: int | None = None
        self.accumulate_grad_batches: int | None = None
        self.train_batch_size: int | None = None
        self.eval_batch_size: int | None = None
        self._resized_this_fit = False

    # ---- training ---------------------------------------------------------------------------------------------------
    def handle_train_oom(
        self, trainer: L.Trainer, pl_module: L.LightningModule, failed_size: int, error: BaseException
    ) -> None:
        """Called by the module with the size of the chunk that ran out of memory; sets the sizes for the retry."""
        _free_memory(trainer, error)
        new = failed_size // 2
        if trainer.world_size > 1:
            self._handle_distributed_oom(trainer, pl_module, failed_size, new)
            return
        if new < self.min_micro_batch:
            raise UserInputError(
                f"CUDA out of memory with a micro-batch of {failed_size}, and OOMBatchSizeScaler goes no lower than "
                f"min_micro_batch={self.min_micro_batch}. To fit, use " + _SMALLER_SETUP + "."
            )
        state: MicroBatchState = pl_module.engine.micro_batch
        micro_batch_size = state.micro_batch_size or getattr(trainer.datamodule, "batch_size", None) or failed_size
        factor = micro_batch_size / new
        self._shrink(trainer, state, new, micro_batch_size, f"CUDA out of memory at a micro-batch of {failed_size}")
        # chunks already accumulated in this step are counted in the new, smaller size, so they keep their weight
        state.micro_batches_done = round(state.micro_batches_done * factor)

    def _handle_distributed_oom(self, trainer: L.Trainer, pl_module: L.LightningModule, failed_size: int, new: int) -> None:
        engine = pl_module.engine
        state: MicroBatchState = engine.micro_batch
        if engine.sharded or not engine.syncs_gradients_per_step:
            micro_batch_size = state.micro_batch_size or getattr(trainer.datamodule, "batch_size", None) or failed_size
            accumulate = max(1, round(state.accumulate_grad_batches * micro_batch_size / max(new, 1)))
            raise UserInputError(
                f"CUDA out of memory on rank {trainer.global_rank} with a micro-batch of {failed_size}. Under this "
                "strategy (FSDP: collectives inside every forward and backward) the ranks can't recover in place. "
                f"Restart with --data.batch_size {max(new, 1)} --model.accumulate_grad_batches {accumulate} (the same "
                "effective batch), or use " + _SMALLER_SETUP + "."
            )
        # 0 = "can't go lower": the agreement at the optimizer step then stops every rank together (adopt_micro_batch)
        new = new if new >= self.min_micro_batch else 0
        pending = state.pending_micro_batch_size
        state.pending_micro_batch_size = new if pending is None else min(pending, new)

    def adopt_micro_batch(self, trainer: L.Trainer, pl_module: L.LightningModule, size: int) -> None:
        """DDP: called on every rank at an optimizer step with the smallest micro-batch any rank fell back to."""
        if size < self.min_micro_batch:
            raise UserInputError(
                f"CUDA out of memory on a rank at micro-batch {self.min_micro_batch} or less, and OOMBatchSizeScaler goes "
                f"no lower than min_micro_batch={self.min_micro_batch}. To fit, use " + _SMALLER_SETUP + "."
            )
        state: MicroBatchState = pl_module.engine.micro_batch
        micro_batch_size = state.micro_batch_size or getattr(trainer.datamodule, "batch_size", None) or size
        if size >= micro_batch_size:
            return
        what = f"CUDA out of memory on a rank (of {trainer.world_size}); it fell back to micro-batches of {size}"
        self._shrink(trainer, state, size, micro_batch_size, what)

    def _shrink(self, trainer: L.Trainer, state: MicroBatchState, new: int, micro_batch_size: int, what: str) -> None:
        """Micro-batch ``new`` instead of ``micro_batch_size`` (the size until now), accumulation scaled to keep the
        effective batch, loader batches of ``new`` from the next one."""
        datamodule = trainer.datamodule
        loader_batch = getattr(datamodule, "batch_size", None)
        old_accumulate = state.accumulate_grad_batches
        new_accumulate = max(1, round(old_accumulate * micro_batch_size / max(new, 1)))
        state.micro_batch_size = new
        state.accumulate_grad_batches = new_accumulate
        if micro_batch_size % new:
            rank_zero_warn(
                f"OOMBatchSizeScaler: micro-batches of {micro_batch_size} are not a whole number of {new}, so the "
                f"effective batch changes from {micro_batch_size * old_accumulate} to {new * new_accumulate}; even "
                "batch sizes keep it exact."
            )
        if loader_batch is not None and new < loader_batch:
            if getattr(datamodule, "eval_batch_size", 0) is None:
                datamodule.eval_batch_size = loader_batch  # it followed batch_size; evaluation has its own OOM path
            datamodule.batch_size = new
            _resize_train_epoch(trainer)
            self._resized_this_fit = True
        self.recoveries += 1
        self._mirror(state, datamodule)
        if self.verbose:
            rank_zero_info(
                f"OOMBatchSizeScaler: {what} (optimizer step {trainer.global_step}); continuing with micro-batches of "
                f"{new} x {new_accumulate} accumulated (effective batch {new * new_accumulate}; was {micro_batch_size} x "
                f"{old_accumulate})"
                + (f"; the loader yields batches of {new} from the next one" if loader_batch is not None else "")
                + f". Recoveries so far: {self.recoveries}."
            )

    @override
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: STEP_OUTPUT, batch: Any, batch_idx: int
    ) -> None:
        if self.recoveries:
            state: MicroBatchState = pl_module.engine.micro_batch
            pl_module.log_dict(
                {
                    "train/oom_recoveries": float(self.recoveries),
                    "train/micro_batch_size": float(state.micro_batch_size or 0),
                    "train/accumulate_grad_batches": float(state.accumulate_grad_batches),
                },
                on_step=True,
                on_epoch=False,
            )

    @override
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # the fit loop measured the epoch length once, before the batch size changed; a new epoch has yet another
        if self._resized_this_fit:
            _resize_train_epoch(trainer)

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._resized_this_fit = False
        state = micro_batch_state(pl_module)
        micro = None if state is None else state.micro_batch_size
        accumulate = None if state is None else state.accumulate_grad_batches
        if trainer.world_size > 1:
            # every rank restored the same checkpoint; broadcasting makes sure they also act on one set of sizes
            micro, accumulate, self.eval_batch_size = trainer.strategy.broadcast(
                (micro, accumulate, self.eval_batch_size)
            )
            if state is not None:
                state.micro_batch_size, state.accumulate_grad_batches = micro, accumulate
        datamodule = trainer.datamodule
        loader_batch = getattr(datamodule, "batch_size", None)
        if micro is not None and loader_batch is not None and micro < loader_batch:
            if getattr(datamodule, "eval_batch_size", 0) is None:
                datamodule.eval_batch_size = loader_batch
            datamodule.batch_size = micro
            _resize_train_epoch(trainer)  # configure_optimizers may have built the loader at the old size already
            self._resized_this_fit = True
            rank_zero_info(
                f"OOMBatchSizeScaler: resuming with the sizes an earlier OOM left: batches of {micro} x {accumulate} "
                f"accumulated (--data.batch_size {loader_batch} is overridden)."
            )
        self._apply_eval_batch_size(datamodule)
        self._mirror(state, datamodule)

    # ---- evaluation -------------------------------------------------------------------------------------------------
    def handle_eval_oom(
        self, trainer: L.Trainer, pl_module: L.LightningModule, failed_size: int, error: BaseException
    ) -> None:
        """Called by the module when evaluating ``failed_size`` samples ran out of memory; it then halves the batch."""
        _free_memory(trainer, error)
        if trainer.world_size > 1 and pl_module.engine.sharded:
            raise UserInputError(
                f"CUDA out of memory on rank {trainer.global_rank} evaluating {failed_size} samples. Under FSDP the ranks "
                "can't split evaluation batches independently; restart with a smaller --data.eval_batch_size, or a "
                "smaller --model.generation.num_beams or --model.generation.max_new_tokens."
            )
        new = failed_size // 2
        if new < 1:
            raise UserInputError(
                "CUDA out of memory while evaluating a single example. Generation needs less memory with a smaller "
                "--model.generation.num_beams or --model.generation.max_new_tokens, or use " + _SMALLER_SETUP + "."
            )
        datamodule = trainer.datamodule
        current = getattr(datamodule, "eval_batch_size", None) or getattr(datamodule, "batch_size", None)
        if current is not None and new < current:
            datamodule.eval_batch_size = new  # for loaders built from now on; the running one is cut by the module
        self.eval_recoveries += 1
        self.eval_batch_size = getattr(datamodule, "eval_batch_size", None)
        if self.verbose:
            rank_zero_info(
                f"OOMBatchSizeScaler: CUDA out of memory evaluating {failed_size} samples; continuing in halves "
                f"(--data.eval_batch_size {self.eval_batch_size} for later evaluations). Training sizes are unchanged."
            )

    @override
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._share_eval_batch_size(trainer)

    @override
    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._share_eval_batch_size(trainer)

    @override
    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._share_eval_batch_size(trainer)

    def _share_eval_batch_size(self, trainer: L.Trainer) -> None:
        # all ranks reach the end of an evaluation: the safe point to agree on the smallest size for later loaders
        datamodule = trainer.datamodule
        if trainer.world_size == 1 or getattr(datamodule, "eval_batch_size", None) is None:
            return
        mine = torch.tensor(float(datamodule.eval_batch_size), device=trainer.strategy.root_device)
        smallest = int(trainer.strategy.reduce(mine, reduce_op="min"))
        datamodule.eval_batch_size = min(datamodule.eval_batch_size, smallest)
        self.eval_batch_size = datamodule.eval_batch_size

    def _apply_eval_batch_size(self, datamodule: Any) -> None:
        if self.eval_batch_size is None or not hasattr(datamodule, "eval_batch_size"):
            return
        current = datamodule.eval_batch_size or datamodule.batch_size
        if self.eval_batch_size < current:
            datamodule.eval_batch_size = self.eval_batch_size

    def _mirror(self, state: MicroBatchState | None, datamodule: Any) -> None:
        self.micro_batch_size = None if state is None else state.micro_batch_size
        self.accumulate_grad_batches = None if state is None else state.accumulate_grad_batches
        self.train_batch_size = getattr(datamodule, "batch_size", None)

    # ---- checkpointing ----------------------------------------------------------------------------------------------
    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "recoveries": self.recoveries,
            "eval_recoveries": self.eval_recoveries,
            "micro_batch_size": self.micro_batch_size,
            "accumulate_grad_batches": self.accumulate_grad_batches,
            "train_batch_size": self.train_batch_size,
            "eval_batch_size": self.eval_batch_size,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.recoveries = state_dict.get("recoveries", 0)
        self.eval_recoveries = state_dict.get("eval_recoveries", 0)
        self.micro_batch_size = state_dict.get("micro_batch_size")
        self.accumulate_grad_batches = state_dict.get("accumulate_grad_batches")
        self.train_batch_size = state_dict.get("train_batch_size")
        self.eval_batch_size = state_dict.get("eval_batch_size")


def _free_memory(trainer: L.Trainer, error: BaseException) -> None:
    # The traceback keeps the failed forward's frames, and with them its activations, alive; clearing those frames'
    # locals (frames still running are skipped) lets gc and the caching allocator give the memory back.
    traceback.clear_frames(error.__traceback__)
    gc.collect()
    if trainer.strategy.root_device.type == "cuda":
        torch.cuda.empty_cache()


def _resize_train_epoch(trainer: L.Trainer) -> None:
    """Tell the fit loop how many batches the running epoch has after the train batch size changed.

    Lightning measures the epoch once, when its iterator is created: ``fit_loop.max_batches`` (what
    ``trainer.num_training_batches`` returns), the train ``CombinedLoader``'s ``limits`` and the data fetcher's
    ``length``, from which it sets ``is_last_batch``. With smaller batches the epoch has more of them, and the stale
    count would end it early (and step the optimizer early on the wrongly flagged "last" batch). ``len()`` of our
    loader counts the batches run or handed out plus those still to come at the new size.
    """
    loader = trainer.train_dataloader
    length = sized_len(loader) if loader is not None else None
    if length is None:
        return  # not built yet (setup_data measures it then) or of unknown length (no epoch count to fix)
    limit = trainer.limit_train_batches
    num_batches = min(length, limit) if isinstance(limit, int) else int(length * limit)
    compat.set_running_epoch_length(trainer.fit_loop, num_batches)
    # a fractional val_check_interval was turned into a batch count from the old length too
    interval = trainer.val_check_interval
    if isinstance(interval, float) and trainer.val_check_batch is not None and math.isfinite(trainer.val_check_batch):
        trainer.val_check_batch = max(1, int(num_batches * interval))
