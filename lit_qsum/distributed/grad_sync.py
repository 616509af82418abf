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


def all_reduce_grads(params: list[torch.nn.Parameter]) -> None:
    """Average the gradients of ``params`` over all ranks in place (a missing gradient counts as zeros)."""
    world = dist.get_world_size()
    by_dtype: dict[torch.dtype, list[torch.nn.Parameter]] = {}
    for p in params:
        by_dtype.setdefault(p.dtype, []).append(p)
    for group in by_dtype.values():
        for p in group:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in group])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat.div_(world)
        offset = 0
        for p in group:
            n = p.grad.numel()
            p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
            offset += n


def agree(values: list[torch.Tensor | float], device: torch.device) -> list[float]:
    """The maximum over ranks of each value, read on the host (the one device sync per optimizer step)."""
    flags = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=device).reshape(()) for v in values])
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return flags.tolist()
