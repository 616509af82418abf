"""CUDA graphs of the training step: each batch shape's forward + backward captured once, then replayed.

What keeps a replay equal to the eager step (fixed addresses, no host reads, Philox offsets, one memory pool) and
what happens when a capture fails: ``docs/design.md``.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info

from lit_qsum import compat
from lit_qsum.distributed import grad_sync

Batch = dict[str, Any]
Key = tuple[tuple[str, tuple[int, ...]], ...]
# what the training loss reads from a batch (SummarizationModule._loss; the chunked causal loss reads the targets' rows)
INPUT_KEYS = ("input_ids", "attention_mask", "labels", "target_positions", "target_labels")


@dataclass
class GraphStats:
    """What the graphs cost and did, for the log and the benchmarks."""

    captures: int = 0
    capture_s: float = 0.0
    replays: int = 0


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    inputs: dict[str, torch.Tensor]
    loss: torch.Tensor


def unsupported_reason(
    *, device: torch.device, precision: str, sharded: bool, checkpointing: bool, compiled: bool = False
) -> str | None:
    """Why graphs can't (or don't yet) run this training setup (None when they can)."""
    if device.type != "cuda":
        return "CUDA graphs need a CUDA device"
    if compiled and os.environ.get("LIT_QSUM_GRAPHS_OVER_COMPILE") != "1":
        # StepGraphs(warm_each_shape=True) is built for this, but no GPU run has yet checked a captured compiled step
        # against the compiled eager step (issue #16): compiled blocks run without graphs until one has. The
        # benchmark harness sets LIT_QSUM_GRAPHS_OVER_COMPILE=1 to measure the combination meanwhile.
        return "speed.compile is on, and graphs over compiled blocks are not verified on a GPU yet"
    if "16-mixed" in precision and "bf16" not in precision:
        return "16-mixed's loss scaling changes between steps (use bf16-mixed)"
    if sharded:
        return "FSDP gathers weights inside the step"
    if checkpointing and torch_version() < (2, 10):
        return f"activation checkpointing under capture needs torch >= 2.10 (this is {torch.__version__})"
    return None


def torch_version() -> tuple[int, int]:
    major, minor = torch.__version__.split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


class StepGraphs:
    """Captured forward + backward per batch shape; see the module docstring for what keeps them exact.

    Args:
        loss_fn: The training loss of a batch (reads ``INPUT_KEYS``).
        params: The trainable parameters; their ``.grad`` tensors must stay the same objects between steps.
        max_graphs: Shapes beyond this many run eagerly (each graph costs a capture; memory is shared).
        max_capture_ooms: Captures that may run out of memory before graphs are switched off for the run (the first
            ones free every graph, so that the eager step's OOM recovery can shrink the batch).
        warm_each_shape: Run each shape's first micro-batch eagerly and capture it when it comes again (for
            compiled blocks: compiling and autotuning can't happen inside a capture).
        cudnn_attention: Let scaled-dot-product attention use cuDNN inside captures (its per-shape plan is made once,
            at capture; replays don't re-plan), whatever the process-wide switch says outside them. A capture that
            fails with it on is retried without it.
        log: Where the one-line messages go (capture costs, the reason graphs were switched off).
    """

    def __init__(
        self,
        loss_fn: Callable[[Batch], torch.Tensor],
        params: Sequence[torch.nn.Parameter],
        *,
        max_graphs: int = 64,
        max_capture_ooms: int = 2,
        warm_each_shape: bool = False,
        cudnn_attention: bool = False,
        log: Callable[[str], None] = rank_zero_info,
    ) -> None:
        if max_graphs < 1:
            raise ValueError(f"max_graphs must be >= 1, got {max_graphs}")
        self.loss_fn = loss_fn
        self.params = list(params)
        self.max_graphs = max_graphs
        self.max_capture_ooms = max_capture_ooms
        self.capture_ooms = 0
        self.warm_each_shape = warm_each_shape
        self.cudnn_attention = cudnn_attention
        self.log = log
        self.stats = GraphStats()
        self.off_reason: str | None = None
        self._warm = False
        self._graphs: dict[Key, _Captured] = {}
        self._grads: list[torch.Tensor] | None = None
        self._pool: Any = None
        self._weight: torch.Tensor | None = None
        self._full_logged = False
        self._seen: set[Key] = set()

    @property
    def on(self) -> bool:
        return self.off_reason is None

    @property
    def keeps_grads(self) -> bool:
        """True once gradients are static buffers: zero them in place (``set_to_none=False``), never replace them."""
        return self.on and self._grads is not None

    def summary(self) -> str:
        """One line: graphs captured, their one-off cost, replays."""
        if not self.on:
            return f"fast path: CUDA graphs were off ({self.off_reason})"
        return (f"fast path: {self.stats.captures} step graph(s) captured in {self.stats.capture_s:.1f} s, "
                f"replayed {self.stats.replays} times")

    def reset(self) -> None:
        """Drop every graph and its memory (after an OOM, or when gradients were replaced); capture again as needed."""
        self._graphs.clear()
        self._grads = None
        self._pool = None

    def turn_off(self, reason: str) -> None:
        """Eager steps from now on; frees the graphs and their memory pool."""
        if self.off_reason is None:
            self.off_reason = reason
            self.log(f"fast path: CUDA graphs off: {reason}; training steps run eagerly")
        self.reset()

    def eager_context(self) -> contextlib.AbstractContextManager:
        """Where the engine runs the micro-batches the graphs leave to it: as a capture runs them, under the autocast
        of a capture (no weight-cast cache) and with SDPA masks always built, so compiled blocks see the same global
        state and the same inputs (a mask, never None), warm up for them, and are not recompiled inside a capture.
        With ``cudnn_attention`` they may use cuDNN's attention as captures do: the warm-up step so initializes it
        before the first capture (a first use inside a capture fails, H200 2026-11-30), and they train with the
        captures' kernels."""
        if not self.on:
            return contextlib.nullcontext()
        stack = contextlib.ExitStack()
        stack.enter_context(_as_captured(self.params[0].device.type))
        stack.enter_context(_cudnn_sdp(self.cudnn_attention))
        return stack

    def forward_backward(
        self, batch: Batch, weight: float, backward_context: Callable[[], contextlib.AbstractContextManager]
    ) -> torch.Tensor | None:
        """``loss_fn(batch)`` and the backward of ``loss * weight`` through the batch's graph.

        Returns the loss (a graph-owned tensor: read it before the next call), or None when the caller must
        run this micro-batch eagerly (graphs off, the warm-up step, too many shapes).
        """
        if not self.on:
            return None
        key = tuple((name, tuple(batch[name].shape)) for name in INPUT_KEYS if name in batch)
        if not self._warm or (self.warm_each_shape and key not in self._seen):
            self._warm = True
            self._seen.add(key)
            return None
        if self._grads is not None and not self._grads_intact():
            # someone replaced or dropped a gradient (an OOM rollback, a batch-size finder): the graphs add into the
            # old tensors, so start over from fresh buffers
            self.reset()
        captured = self._graphs.get(key)
        if captured is None:
            if len(self._graphs) >= self.max_graphs:
                if not self._full_logged:
                    self._full_logged = True
                    self.log(f"fast path: {self.max_graphs} step graphs captured; further batch shapes run eagerly")
                return None
            captured = self._capture(key, batch, backward_context)
            if captured is None:
                return None
        for name, buffer in captured.inputs.items():
            buffer.copy_(batch[name], non_blocking=True)
        assert self._weight is not None
        self._weight.fill_(weight)
        captured.graph.replay()
        self.stats.replays += 1
        return captured.loss

    def _capture(
        self, key: Key, batch: Batch, backward_context: Callable[[], contextlib.AbstractContextManager]
    ) -> _Captured | None:
        """Capture ``batch``'s shape; on failure say why, leave this micro-batch to the eager step and return None."""
        if self._grads is None:
            # one flat buffer per dtype: DDP's per-step all-reduce then runs on it in place (grad_sync.all_reduce_grads)
            grad_sync.flat_grads(self.params)
            self._grads = [p.grad for p in self.params]
        started = time.perf_counter()
        try:
            captured = self._record(key, batch, backward_context)
        except torch.cuda.OutOfMemoryError:
            self.capture_ooms += 1
            if self.capture_ooms >= self.max_capture_ooms:
                # graphs hold their own memory pool; where captures keep running out, eager steps use less
                self.turn_off(f"{self.capture_ooms} captures ran out of GPU memory")
            else:
                # this micro-batch runs eagerly, where OOM recovery can shrink it; smaller shapes are captured later
                self.reset()
            self._after_failed_capture()
            return None
        except RuntimeError as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            if self.cudnn_attention:
                # cuDNN attention is the one kernel choice captures add to the eager step: capture without it next
                self.cudnn_attention = False
                self.log(f"fast path: a capture with cuDNN attention failed ({first[:200]}); capturing without it")
                self.reset()
            else:
                self.turn_off(f"capture failed ({first[:200]})")
            self._after_failed_capture()
            return None
        seconds = time.perf_counter() - started
        self.stats.captures += 1
        self.stats.capture_s += seconds
        if self.stats.captures == 1:
            shape = ", ".join(f"{name} {list(size)}" for name, size in key)
            self.log(f"fast path: captured the training step as a CUDA graph for {shape} in {seconds:.1f} s; "
                     "each new batch shape costs one capture (see summary())")
        self._graphs[key] = captured
        return captured

    def _record(
        self, key: Key, batch: Batch, backward_context: Callable[[], contextlib.AbstractContextManager]
    ) -> _Captured:
        """Capture the step of ``batch``'s shape into the shared pool (raises what the capture raised)."""
        device = self.params[0].device
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
            self._weight = torch.ones((), dtype=torch.float32, device=device)
        inputs = {name: batch[name].clone() for name, _ in key}
        graph = torch.cuda.CUDAGraph()
        with _as_captured(device.type), _cudnn_sdp(self.cudnn_attention), torch.cuda.graph(
            graph, pool=self._pool, capture_error_mode="thread_local"
        ), backward_context():
            loss = self.loss_fn(inputs)
            (loss * self._weight).backward()
        return _Captured(graph, inputs, loss.detach())

    def _after_failed_capture(self) -> None:
        device = self.params[0].device
        _end_generator_capture(device)
        torch.cuda.empty_cache()

    def _grads_intact(self) -> bool:
        assert self._grads is not None
        return all(p.grad is g for p, g in zip(self.params, self._grads))


def _end_generator_capture(device: torch.device) -> None:
    """Take the CUDA random generator out of capture mode after a failed capture.

    A capture that raises never reaches the generator's capture epilogue, and from then on every eager random op
    (dropout) fails with "Offset increment outside graph capture encountered unexpectedly". A small capture that
    succeeds runs the prologue and the epilogue again, which leaves the generator as a finished capture would.
    """
    try:
        torch.cuda.synchronize(device)
        scratch = torch.zeros(1, device=device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            scratch.add_(1)
        del graph
    except RuntimeError:  # nothing more to do: the eager steps will report what is wrong
        pass


@contextlib.contextmanager
def _as_captured(device_type: str) -> Iterator[None]:
    """What a capture runs under, and the eager micro-batches beside it (``StepGraphs.eager_context``)."""
    with _same_autocast_without_cache(device_type), always_build_sdpa_masks():
        yield


@contextlib.contextmanager
def _cudnn_sdp(enabled: bool) -> Iterator[None]:
    """cuDNN scaled-dot-product attention allowed inside (when ``enabled``), the process-wide switch put back after."""
    saved = torch.backends.cuda.cudnn_sdp_enabled()
    if enabled:
        torch.backends.cuda.enable_cudnn_sdp(True)
    try:
        yield
    finally:
        torch.backends.cuda.enable_cudnn_sdp(saved)


@contextlib.contextmanager
def _same_autocast_without_cache(device_type: str) -> Iterator[None]:
    """The autocast in force (Lightning's bf16-mixed), with its weight-cast cache off: cached casts made while
    capturing would live in the graph's pool and be read back by eager code later (torch's graph docs)."""
    if not torch.is_autocast_enabled(device_type):
        yield
        return
    with torch.autocast(device_type, dtype=torch.get_autocast_dtype(device_type), cache_enabled=False):
        yield


@contextlib.contextmanager
def always_build_sdpa_masks() -> Iterator[None]:
    """While capturing, transformers always builds the SDPA mask instead of reading the padding mask on the host
    to see whether it may skip it (a host read can't be captured; a built all-ones mask is the same attention)."""
    masking_utils, names = compat.sdpa_mask_skip_helpers()
    saved = {name: getattr(masking_utils, name) for name in names}
    for name in saved:
        setattr(masking_utils, name, _never_skip)
    try:
        yield
    finally:
        for name, helper in saved.items():
            setattr(masking_utils, name, helper)


def _never_skip(*args: Any, **kwargs: Any) -> bool:
    return False
