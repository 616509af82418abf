"""The training step ``SummarizationModule`` runs itself (``StepEngine``): micro-batches, OOM recovery, NaN/Inf skips,
gradient sync across ranks.

Why it is built this way, and what stays exact when an OOM halves the micro-batch: ``docs/design.md``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import lightning.pytorch as L
import torch
from lightning.pytorch.utilities import rank_zero_warn

from lit_qsum.data.collate import count_tokens
from lit_qsum.distributed import fsdp, grad_sync
from lit_qsum.errors import UserInputError
from lit_qsum.fastpath import lora_linear
from lit_qsum.fastpath.cuda_graphs import StepGraphs
from lit_qsum.micro_batch import MicroBatchState, find_oom_handler

_Result = TypeVar("_Result")


def split_batch(batch: dict[str, Any], size: int) -> list[dict[str, Any]]:
    """Cut a collated batch (tensors and lists along dim 0) into chunks of at most ``size`` examples."""
    n = len(batch["index"])

    def along_batch(value: Any) -> bool:
        if isinstance(value, torch.Tensor):
            return value.dim() > 0 and value.shape[0] == n
        return isinstance(value, list) and len(value) == n

    chunks = []
    for start in range(0, n, size):
        chunk = {k: v[start : start + size] if along_batch(v) else v for k, v in batch.items()}
        if "num_tokens" in batch and "attention_mask" in chunk:
            chunk["num_tokens"] = count_tokens(chunk)
        chunks.append(chunk)
    return chunks


def label_tokens(batch: dict[str, Any], task: str) -> int:
    """Label tokens the loss averages over (a causal LM never scores the first position)."""
    labels = batch["labels"][:, 1:] if task == "causal" else batch["labels"]
    return int((labels != -100).sum())


def token_shares(batch: dict[str, Any], parts: list[dict[str, Any]], task: str) -> list[float]:
    """Each part's share of ``batch``'s mean token loss: weighting part losses by it gives the batch loss."""
    tokens = [label_tokens(part, task) for part in parts]
    total = sum(tokens)
    if total == 0:  # no label tokens at all: the loss is NaN anyway, split by samples
        return [len(part["index"]) / len(batch["index"]) for part in parts]
    return [t / total for t in tokens]


@dataclass
class NonfiniteCounts:
    """NaN/Inf losses seen by the step engine.

    Args:
        in_step: Device-side count of NaN/Inf losses in the open optimizer step (None: none counted yet).
        in_a_row: Optimizer steps skipped in a row for a NaN/Inf loss.
        total: Optimizer steps skipped for a NaN/Inf loss in the whole run.

    """

    in_step: torch.Tensor | None = None
    in_a_row: int = 0
    total: int = 0


@dataclass
class PendingStep:
    """An optimizer step whose NaN/Inf count and mean loss are still on their way to the host (``StepEngine``'s
    sync-free step): a copy enqueued after the step's backward, read at the next optimizer step, by when it is done."""

    values: torch.Tensor  # [count, mean loss], pinned host memory on CUDA
    ready: torch.cuda.Event | None


class StepEngine:
    """Runs the training steps of a LightningModule with ``automatic_optimization = False``.

    ``train_step`` runs one loader batch forward and backward in micro-batches and steps the optimizer every
    ``accumulate_grad_batches`` of them; ``eval_with_oom_retry`` runs an evaluation batch. The owning module
    calls ``setup_train`` at train start and ``clip_gradients`` from its ``on_before_optimizer_step`` hook. The
    engine drives the module through the LightningModule API (``manual_backward``, ``optimizers``,
    ``lr_schedulers``, ``clip_gradients``, ``log``, ``trainer``) and its ``model``.

    Args:
        module: The LightningModule that owns this engine.
        accumulate_grad_batches: Micro-batches per optimizer step.
        gradient_clip_val: Clip the gradient norm to this (None = no clipping).
        max_consecutive_nonfinite: Stop after this many optimizer steps in a row skipped for a NaN/Inf loss.

    """

    def __init__(
        self,
        module: L.LightningModule,
        accumulate_grad_batches: int,
        gradient_clip_val: float | None,
        max_consecutive_nonfinite: int,
    ) -> None:
        self.module = module
        self.gradient_clip_val = gradient_clip_val
        self.max_consecutive_nonfinite = max_consecutive_nonfinite
        self.micro_batch = MicroBatchState(accumulate_grad_batches=accumulate_grad_batches)
        self.nonfinite = NonfiniteCounts()
        self.graphs: StepGraphs | None = None  # set at train start where CUDA graphs can run the step
        self._loss: Callable[[dict[str, Any]], torch.Tensor] | None = None
        self._task = "seq2seq"
        self._syncs_per_step = False  # set at train start: under DDP the engine averages gradients itself
        self._trainable_params: list[torch.nn.Parameter] | None = None
        self._copy_plans: list[Any] | None = None  # fused LoRA layers with compute-dtype adapter copies
        self._resumed_open_step: dict[str, Any] | None = None
        # the open optimizer step's summed micro-batch losses (device) and their number; a sum, not the tensors, since
        # a CUDA graph's loss is overwritten by its next replay
        self._loss_sum: torch.Tensor | None = None
        self._loss_count = 0
        self.pending: PendingStep | None = None
        self._readback: tuple[torch.Tensor, torch.cuda.Event] | None = None  # the sync-free step's pinned copy
        self.last_loss: float | None = None  # mean loss of the last optimizer step read back (the progress bar's)

    def setup_train(
        self,
        loss: Callable[[dict[str, Any]], torch.Tensor],
        task: str,
        syncs_per_step: bool,
        graphs: StepGraphs | None,
    ) -> None:
        """What training steps need once the strategy and the optimizer state are final (at train start).

        Args:
            loss: The mean token loss of a batch.
            task: ``seq2seq`` or ``causal``: which label tokens the loss averages over.
            syncs_per_step: True under DDP and FSDP: gradients are averaged here, once per optimizer step.
            graphs: CUDA graphs that run forward and backward, or None for eager steps.

        """
        self._loss = loss
        self._task = task
        self._syncs_per_step = syncs_per_step
        self.graphs = graphs
        self.refresh_adapter_copies()  # weights loaded or put back (a checkpoint, the batch-size finder) since last use
        self._apply_resumed_open_step()

    @property
    def syncs_gradients_per_step(self) -> bool:
        """True under DDP and FSDP: the adapter's gradients are averaged once per optimizer step, here."""
        return self._syncs_per_step

    @property
    def sharded(self) -> bool:
        """True under FSDP (``QLoraFSDPStrategy``): forward and backward all-gather the frozen base across ranks."""
        return fsdp.is_sharded(self.module.model)

    def trainable(self) -> list[torch.nn.Parameter]:
        """The parameters training changes (built once: walking every frozen 4-bit parameter per step is wasted)."""
        if self._trainable_params is None:
            self._trainable_params = [p for p in self.module.model.parameters() if p.requires_grad]
        return self._trainable_params

    def reset_trainable(self) -> None:
        """Forget the trainable parameters found so far: a strategy may have wrapped the model since."""
        self._trainable_params = None
        self._copy_plans = None

    def refresh_adapter_copies(self) -> int:
        """Bring the fused layers' compute-dtype adapter copies up to date with the weights (``speed.adapter_copies``);
        returns how many layers changed."""
        if self._copy_plans is None:
            self._copy_plans = lora_linear.fused_plans(self.module.model)
        return lora_linear.refresh_adapter_copies(self._copy_plans)

    # ---- training -------------------------------------------------------------------------------------------------
    def train_step(self, batch: dict[str, Any]) -> list[torch.Tensor]:
        """Forward and backward of one loader batch, then the optimizer step if the accumulation is complete.

        Returns:
            The detached losses of the micro-batches run (empty where this rank could not run any).

        Raises:
            UserInputError: After ``max_consecutive_nonfinite`` optimizer steps in a row skipped for NaN/Inf losses.

        """
        losses = self._backward_batch(batch)
        for loss in losses:
            # a copy, never the loss itself: a CUDA graph's next replay writes its next loss into the same tensor
            self._loss_sum = loss.to(torch.float32, copy=True) if self._loss_sum is None else self._loss_sum + loss
            self._loss_count += 1
        self._maybe_optimizer_step()
        return losses

    def _backward_batch(self, batch: dict[str, Any]) -> list[torch.Tensor]:
        """One loader batch: its weight in the step is fixed now, from the sizes all ranks share."""
        state = self.micro_batch
        chunks = math.ceil(len(batch["index"]) / state.micro_batch_size) if state.micro_batch_size else 1
        losses = self._backward_chunks(batch, chunks / state.accumulate_grad_batches)
        if self.syncs_gradients_per_step:
            # counted in the shared unit, however finely this rank had to split after an OOM, so every rank
            # reaches the optimizer step at the same loader batch
            self.micro_batch.micro_batches_done += chunks
        return losses

    def _backward_chunks(self, batch: dict[str, Any], weight: float) -> list[torch.Tensor]:
        """Forward + backward, in chunks of at most ``micro_batch_size``; an OOM halves the chunk and retries.

        Lightning can't retry a step from a callback (an exception in ``training_step`` leaves the fit
        loop), so the retry lives here: the gradients of the failed chunk are rolled back, an
        ``OOMHandler`` callback (if present) decides the new sizes, and the same samples are
        run again in smaller chunks. Without that callback an OOM propagates as usual.

        ``weight``: what this (part of a) loader batch weighs in the optimizer step; fixed when the
        loader batch arrives, so re-splitting after an OOM redistributes it and never changes it.
        A NaN/Inf loss is backpropagated like any other and only counted on the device; the optimizer
        step reads the count once and skips the whole step (no host sync per micro-batch).
        """
        size = len(batch["index"])
        limit = self.micro_batch.chunk_limit()
        if limit == 0:
            return []  # DDP: this rank can't fit even the smallest micro-batch; the step's agreement stops every rank
        if limit is not None and size > limit:
            parts = split_batch(batch, limit)
            shares = token_shares(batch, parts, self._task)
            return [loss for part, share in zip(parts, shares) for loss in self._backward_chunks(part, weight * share)]
        module = self.module
        handler = find_oom_handler(self._trainer())
        graphs = self.graphs
        # a replay can't run out of memory (its memory was taken at capture) and a failed capture changes nothing
        loss = None if graphs is None else graphs.forward_backward(batch, weight, self._local_backward)
        snapshot = self._grad_snapshot() if loss is None and handler is not None and self._has_grads() else None
        try:
            if loss is None:
                with contextlib.nullcontext() if graphs is None else graphs.eager_context():
                    loss = self._loss(batch)
                    with self._local_backward():
                        module.manual_backward(loss * weight)
        except torch.cuda.OutOfMemoryError as err:
            if handler is None:
                raise
            loss = None  # drop the failed step's activations before measuring what is free
            self._restore_grads(snapshot)
            if graphs is not None:
                graphs.reset()  # free the graphs' memory too; the smaller shapes are captured anew
            handler.handle_train_oom(module.trainer, module, size, err)
        else:
            if not self.syncs_gradients_per_step:
                self.micro_batch.micro_batches_done += 1
            bad = (~torch.isfinite(loss.detach())).to(torch.int32)
            counted = self.nonfinite.in_step
            self.nonfinite.in_step = bad if counted is None else counted + bad
            return [loss.detach()]
        # after an OOM: retried outside the except block, so the failed attempt's traceback no longer pins its tensors
        return self._backward_chunks(batch, weight)

    def _trainer(self) -> L.Trainer | None:
        try:
            return self.module.trainer
        except RuntimeError:  # not attached to a Trainer: no callbacks to recover with
            return None

    def _local_backward(self) -> contextlib.AbstractContextManager:
        """Where a backward runs: without DDP's per-backward gradient sync, and with autocast off where
        ``speed.backward_outside_autocast`` asks (Lightning runs a manual backward inside ``training_step``'s
        autocast)."""
        stack = contextlib.ExitStack()
        stack.enter_context(grad_sync.local_backward(self.module.trainer.strategy.model))
        if self.module.speed.backward_outside_autocast:
            stack.enter_context(torch.autocast(self.module.device.type, enabled=False))
        return stack

    def _has_grads(self) -> bool:
        return any(p.grad is not None for p in self.trainable())

    def _grad_snapshot(self) -> list[torch.Tensor | None]:
        return [None if p.grad is None else p.grad.clone() for p in self.trainable()]

    def _restore_grads(self, snapshot: list[torch.Tensor | None] | None) -> None:
        for i, p in enumerate(self.trainable()):
            p.grad = None if snapshot is None else snapshot[i]

    def _maybe_optimizer_step(self) -> None:
        module, state = self.module, self.micro_batch
        last = module.trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        if state.micro_batches_done < state.accumulate_grad_batches and not last:
            return
        state.micro_batches_done = 0
        optimizer = module.optimizers()
        if self._skips_on_device(optimizer):
            self._step_without_sync(optimizer)
            return
        self.resolve_pending()  # a sync-free step before this one (an OOM's pending size makes this one synced)
        nonfinite, smallest = self._agree_on_step()
        mean = self._take_mean_loss()
        self.last_loss = None if mean is None else float(mean)  # read after the agreement's sync: no extra wait
        if nonfinite:
            optimizer.zero_grad(set_to_none=self._drops_grads)
            self._on_nonfinite_step(nonfinite)
        elif self.syncs_gradients_per_step or self.sharded or self._has_grads():
            self.nonfinite.in_a_row = 0
            if self.syncs_gradients_per_step:
                grad_sync.all_reduce_grads(self.trainable())
            self._step_and_schedule(optimizer)
        if smallest is not None:
            handler = find_oom_handler(module.trainer)
            if handler is not None:
                handler.adopt_micro_batch(module.trainer, module, smallest)

    @property
    def _drops_grads(self) -> bool:
        """``zero_grad``'s ``set_to_none``: captured steps add into fixed gradient tensors, zeroed in place instead."""
        return self.graphs is None or not self.graphs.keeps_grads

    def _step_and_schedule(self, optimizer: Any) -> None:
        optimizer.step()  # clips in on_before_optimizer_step, once 16-mixed's scaler has unscaled the gradients
        self.refresh_adapter_copies()  # a captured step reads them without checking
        optimizer.zero_grad(set_to_none=self._drops_grads)
        scheduler = self.module.lr_schedulers()
        if scheduler is not None:
            scheduler.step()

    # ---- the optimizer step without a host sync -----------------------------------------------------------------------
    def _skips_on_device(self, optimizer: Any) -> bool:
        """Whether this step can skip a NaN/Inf update on the device instead of reading the count first: one process,
        no OOM fallback to agree on, bf16/fp32 (a 16-mixed GradScaler reads its own flags), and torch's fused
        Adam/AdamW, whose kernel takes ``found_inf`` and then leaves weights, moments and step count as they were."""
        inner = getattr(optimizer, "optimizer", optimizer)
        return (
            not self.syncs_gradients_per_step
            and not self.sharded
            and self.micro_batch.pending_micro_batch_size is None
            and self.module.trainer.world_size == 1
            and str(self.module.trainer.precision) != "16-mixed"  # not a substring test: "bf16-mixed" contains it
            and type(inner) in (torch.optim.Adam, torch.optim.AdamW)
            and all(group.get("fused") for group in inner.param_groups)
        )

    def _step_without_sync(self, optimizer: Any) -> None:
        """The optimizer step with no host read: a NaN/Inf loss makes the fused kernel skip the update on the device.

        The host learns of it at the next optimizer step (``resolve_pending``), from a copy enqueued now, which is
        done by then: it warns, counts and stops after ``max_consecutive_nonfinite`` in a row as the synced step
        does, one step later. Unlike that step, a skipped one still counts (global step, LR schedule), as steps
        torch.amp's GradScaler skips do. The host meanwhile queues the next batch while the GPU works.
        """
        self.resolve_pending()
        counted, self.nonfinite.in_step = self.nonfinite.in_step, None
        mean = self._take_mean_loss()
        if not self._has_grads():
            return
        inner = getattr(optimizer, "optimizer", optimizer)
        device = self.trainable()[0].device
        count = torch.zeros((), device=device) if counted is None else counted.to(torch.float32)
        inner.found_inf = (count > 0).to(torch.float32)
        try:
            self._step_and_schedule(optimizer)  # NaN gradients give a NaN clipping norm: skipped all the same
        finally:
            del inner.found_inf
        values = torch.stack([count, torch.full((), float("nan"), device=device) if mean is None else mean])
        if values.is_cuda:
            # one page-locked buffer and event for the run: each step's copy is read (resolve_pending) before the next
            if self._readback is None:
                self._readback = (torch.empty(2, dtype=torch.float32, pin_memory=True), torch.cuda.Event())
            host, ready = self._readback
            host.copy_(values, non_blocking=True)
            ready.record()
            self.pending = PendingStep(host, ready)
        else:
            self.pending = PendingStep(values, None)

    def discard_trial_steps(self) -> None:
        """Forget what trial steps left to read back (a batch-size finder's, whose state is put back after them)."""
        self.pending, self.last_loss = None, None
        self._loss_sum, self._loss_count = None, 0

    def _take_mean_loss(self) -> torch.Tensor | None:
        """The open step's mean micro-batch loss (device), and start the next step's sum."""
        total, count = self._loss_sum, self._loss_count
        self._loss_sum, self._loss_count = None, 0
        return None if total is None else total / count

    def resolve_pending(self, log: bool = True) -> None:
        """Read the last sync-free step's outcome (waiting, if at all, for that step only) and do its bookkeeping.

        Called at the next optimizer step and wherever the counts must be final: at the end of training and before
        a checkpoint is written. ``log``: also log ``train/nonfinite_steps`` (only inside a training step).
        """
        pending, self.pending = self.pending, None
        if pending is None:
            return
        if pending.ready is not None:
            pending.ready.synchronize()
        count, loss = (float(v) for v in pending.values.tolist())
        self.last_loss = loss
        if count:
            self._on_nonfinite_step(int(count), log=log)
        else:
            self.nonfinite.in_a_row = 0

    def clip_gradients(self, optimizer: torch.optim.Optimizer) -> None:
        """Clip by norm; call it from ``on_before_optimizer_step``, inside ``optimizer.step()``.

        Lightning's precision plugin calls that hook after a 16-mixed GradScaler has unscaled the gradients.
        Clipping before ``step()``, as Lightning's manual-optimization docs show, clips the loss-scaled gradients
        (Lightning issue #18089), which shrinks every step by the scale.
        """
        if not self.gradient_clip_val:
            return
        if self.sharded or getattr(self.module.trainer.precision_plugin, "scaler", None) is None:
            # FSDP: whole, identical gradients on every rank, which Lightning's FSDP precision plugin won't clip by
            # norm. No loss scaler (bf16-mixed, 32-true): the same clip Lightning's plugin would make, without its
            # refusal to clip for a fused Adam built with ``fused=True`` (a refusal meant for 16-mixed's scaler)
            torch.nn.utils.clip_grad_norm_(self.trainable(), self.gradient_clip_val)
        else:
            self.module.clip_gradients(
                optimizer, gradient_clip_val=self.gradient_clip_val, gradient_clip_algorithm="norm"
            )

    def _agree_on_step(self) -> tuple[int, int | None]:
        """(NaN/Inf losses in the step, max over ranks; the smallest micro-batch a rank fell back to, if any).

        One small all-reduce under DDP/FSDP and one host read everywhere, once per optimizer step.
        """
        counted = self.nonfinite.in_step if self.nonfinite.in_step is not None else 0
        self.nonfinite.in_step = None
        pending = self.micro_batch.pending_micro_batch_size
        self.micro_batch.pending_micro_batch_size = None
        # the max of minus the sizes is minus the smallest size; -inf where a rank had no OOM
        nonfinite, neg_size = grad_sync.agree(
            [counted, -math.inf if pending is None else -pending], self.module.trainer.strategy.root_device
        )
        return int(nonfinite), (None if math.isinf(neg_size) else int(-neg_size))

    def _on_nonfinite_step(self, count: int, log: bool = True) -> None:
        module, counts = self.module, self.nonfinite
        counts.in_a_row += 1
        counts.total += 1
        if log:
            module.log("train/nonfinite_steps", float(counts.total), on_step=True, on_epoch=False)
        where = " on at least one rank" if module.trainer.world_size > 1 else ""
        rank_zero_warn(
            f"step {module.global_step}: {count} micro-batch loss(es) were NaN/Inf{where}; "
            "this optimizer step is skipped"
        )
        if counts.in_a_row >= self.max_consecutive_nonfinite:
            raise UserInputError(
                f"{counts.in_a_row} optimizer steps in a row had non-finite losses (NaN/Inf), stopping. Usual "
                "causes: --trainer.precision 16-mixed with a T5-family model (use bf16-mixed or 32-true), a learning "
                "rate too high for this model (lower --model.optimizer.init_args.lr), or no --model.gradient_clip_val."
            )

    # ---- the open step, for checkpoints -----------------------------------------------------------------------------
    def open_step(self) -> dict[str, Any] | None:
        """The optimizer step in progress, or None between steps: micro-batches done and their summed gradients, so a
        checkpoint saved mid-accumulation (validation or fit's end between steps) resumes with them."""
        if not self.micro_batch.micro_batches_done:
            return None
        nonfinite = self.nonfinite.in_step
        return {
            "micro_batches_done": self.micro_batch.micro_batches_done,
            "nonfinite": 0 if nonfinite is None else int(nonfinite),
            "grads": [None if p.grad is None else p.grad.detach().cpu().clone() for p in self.trainable()],
        }

    def resume_open_step(self, saved: dict[str, Any]) -> None:
        """Continue the step ``open_step`` saved; applied at train start, after Lightning has zeroed the gradients."""
        self._resumed_open_step = saved

    def _apply_resumed_open_step(self) -> None:
        saved, self._resumed_open_step = self._resumed_open_step, None
        if saved is None:
            return
        for param, grad in zip(self.trainable(), saved["grads"]):
            param.grad = None if grad is None else grad.to(device=param.device, dtype=param.dtype)
        self.micro_batch.micro_batches_done = saved["micro_batches_done"]
        if saved["nonfinite"]:
            self.nonfinite.in_step = torch.tensor(saved["nonfinite"], dtype=torch.int32, device=self.module.device)

    # ---- evaluation -------------------------------------------------------------------------------------------------
    def eval_with_oom_retry(
        self, batch: dict[str, Any], run: Callable[[dict[str, Any]], _Result]
    ) -> list[tuple[dict[str, Any], _Result]]:
        """``run(batch)``; on a CUDA OOM, run it over the batch's halves instead (recursively), in batch order.

        Evaluation has no gradients to keep consistent, so only the evaluation batch shrinks: an
        ``OOMHandler`` callback (``handle_eval_oom``) frees memory, stops at one sample and
        halves the data module's ``eval_batch_size`` for loaders built later; the loader running now
        keeps its size, so its later batches are cut to the size that fit here without a failed try.
        Without such a callback an OOM propagates as usual.
        """
        size = len(batch["index"])
        limit = self.micro_batch.eval_micro_batch_size
        if limit is not None and size > limit:
            return [piece for part in split_batch(batch, limit) for piece in self.eval_with_oom_retry(part, run)]
        handler = find_oom_handler(self._trainer())
        try:
            return [(batch, run(batch))]
        except torch.cuda.OutOfMemoryError as err:
            if handler is None:
                raise
            # frees memory; raises when even one sample does not fit
            handler.handle_eval_oom(self.module.trainer, self.module, size, err)
            if size == 1:
                raise
        # retried outside the except block, so the failed attempt's traceback no longer pins its tensors
        self.micro_batch.eval_micro_batch_size = size // 2
        return self.eval_with_oom_retry(batch, run)
