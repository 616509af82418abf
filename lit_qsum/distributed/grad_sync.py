"""DDP with gradients averaged once per optimizer step, so forward and backward run no collective at all.

DDP all-reduces gradient buckets inside ``backward``. That ties every rank's backward passes together: a rank that
runs out of memory and retries its batch in halves runs more backward passes than its peers, which are already
waiting in the all-reduce, and the job hangs. So the module takes gradient sync over from DDP (LoRA gradients are
a few tens of MB, one all-reduce per optimizer step costs well under a millisecond on NVLink):

- ``local_backward`` runs each backward under DDP's ``no_sync`` (DDP's documented switch for gradient
  accumulation; Lightning's manual optimization would otherwise prepare DDP's reducer before every
  ``manual_backward``); DDP's forward still broadcasts buffers, but once per training step on every rank, never
  between one rank's OOM retries (which run the model's own forward, not the wrapper's);
- ``all_reduce_grads`` averages the trainable gradients over ranks in one flat buffer per dtype, before clipping
  and the optimizer step; ranks then hold identical gradients and stay identical replicas, as with DDP's own sync;
- ``agree`` all-reduces (max) a few per-step numbers every rank must share (a non-finite loss anywhere skips the
  step everywhere; the smallest micro-batch any rank fell back to after an OOM) with one small all-reduce.

``torch.distributed`` is called directly rather than through ``strategy.reduce``: Lightning puts a barrier in front
of every reduce, an extra host-blocking collective on each optimizer step.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


def syncs_per_step(model: torch.nn.Module | None) -> bool:
    """Whether ``model`` (the strategy's model) is a DDP wrapper whose gradient sync this module does instead."""
    return isinstance(model, DistributedDataParallel)


def local_backward(model: torch.nn.Module | None) -> AbstractContextManager:
    """Context for one backward: no DDP gradient sync in it (a no-op for anything but a DDP wrapper)."""
    return model.no_sync() if isinstance(model, DistributedDataParallel) else nullcontext()


def flat_grads(params: list[torch.nn.Parameter]) -> dict[torch.dtype, torch.Tensor]:
    """Make the gradients of ``params`` views of one flat buffer per dtype (keeping their values; a missing gradient
    becomes zeros); returns the buffers.

    Autograd accumulates into an existing ``.grad`` in place, so the views stay views as long as nobody replaces
    them (zero them in place: ``zero_grad(set_to_none=False)``), and ``all_reduce_grads`` then averages each
    buffer with one collective and no copies.
    """
    buffers: dict[torch.dtype, torch.Tensor] = {}
    for dtype, group in _by_dtype(params).items():
        flat = torch.zeros(sum(p.numel() for p in group), dtype=dtype, device=group[0].device)
        offset = 0
        for p in group:
            view = flat[offset : offset + p.numel()].view_as(p)
            if p.grad is not None:
                view.copy_(p.grad)
            p.grad = view
            offset += p.numel()
        buffers[dtype] = flat
    return buffers


def all_reduce_grads(params: list[torch.nn.Parameter]) -> None:
    """Average the gradients of ``params`` over all ranks in place (a missing gradient counts as zeros)."""
    world = dist.get_world_size()
    for group in _by_dtype(params).values():
        for p in group:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = _shared_buffer(group)
        if flat is not None:  # the gradients are views of one buffer (flat_grads): reduce it where it lies
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            flat.div_(world)
            continue
        flat = torch.cat([p.grad.reshape(-1) for p in group])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat.div_(world)
        views = [v.view_as(p) for v, p in zip(flat.split([p.numel() for p in group]), group)]
        torch._foreach_copy_([p.grad for p in group], views)


def _by_dtype(params: list[torch.nn.Parameter]) -> dict[torch.dtype, list[torch.nn.Parameter]]:
    groups: dict[torch.dtype, list[torch.nn.Parameter]] = {}
    for p in params:
        groups.setdefault(p.dtype, []).append(p)
    return groups


def _shared_buffer(group: list[torch.nn.Parameter]) -> torch.Tensor | None:
    """The flat tensor the group's gradients are consecutive, contiguous views of, in order (None if they aren't)."""
    first = group[0].grad
    storage = first.untyped_storage()
    offset = first.storage_offset()
    for p in group:
        grad = p.grad
        if grad.untyped_storage().data_ptr() != storage.data_ptr() or grad.storage_offset() != offset or not grad.is_contiguous():
            return None
        offset += grad.numel()
    start = first.storage_offset()
    return first.new_empty(0).set_(storage, start, (offset - start,), (1,))


def agree(values: list[torch.Tensor | float], device: torch.device) -> list[float]:
    """The maximum over ranks of each value, read on the host (the one device sync per optimizer step)."""
    flags = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=device).reshape(()) for v in values])
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return flags.tolist()
