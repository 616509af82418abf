"""ZeRO-1 for the replicated adapter under FSDP: each GPU keeps optimizer state for its share of the adapter only.

Under ``QLoraFSDPStrategy`` the adapter is replicated and its gradients are averaged on every GPU, so every GPU would
hold AdamW's two moments for the whole adapter (t5-xl, LoRA r16 on every linear: 0.26 GiB per GPU, a fifth of a
step's own memory at the peak). ``shard_optimizer_state`` gives each adapter tensor one owner (greedy by size, the
same on every rank): before the update a rank drops the averaged gradients of the tensors it does not own, so the
optimizer makes and updates state for its own tensors only; after it, each owner broadcasts its updated tensors.
Every rank ends the step with the weights one device would have (AdamW's update of a tensor reads only that tensor's
gradient and state), so training stays bitwise that of DDP or one device.

Checkpoints stay strategy-independent: ``full_state_dict`` gathers the owners' state into the one-device layout on
rank 0 (a collective, run by every rank when Lightning dumps a checkpoint), and after a checkpoint is loaded every
rank keeps only its own share (``drop_foreign_state``).

Measured on CPU processes first (``benchmarks/results/2026-11-30-fsdp-memory-cpu.md``, prototype 3): -0.13 GiB
per GPU for t5-xl on 2 GPUs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch.optim import Optimizer

BUCKET_BYTES = 32 * 2**20
"""Broadcast the updated tensors in flat buckets of about this size (fewer collectives, a bounded extra buffer)."""


class ShardedOptimizerState:
    """Installs the sharded step on ``optimizer`` (its ``step`` attribute, wrapping what was there, e.g. an LR
    scheduler's counter) and gathers or drops state for checkpoints."""

    def __init__(self, optimizer: Optimizer, rank: int, world: int, device: torch.device) -> None:
        self.optimizer, self.rank, self.world, self.device = optimizer, rank, world, device
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        loads = [0] * world
        self.owner: dict[int, int] = {}  # id(param) -> rank
        for p in sorted(self.params, key=lambda p: -p.numel()):  # stable: ties keep the groups' order
            r = loads.index(min(loads))
            self.owner[id(p)] = r
            loads[r] += p.numel()
        self.owned = [[p for p in self.params if self.owner[id(p)] == r] for r in range(world)]  # by rank
        self.foreign = [p for p in self.params if self.owner[id(p)] != rank]
        self.buckets = [self._buckets(owned) for owned in self.owned]
        original: Callable[..., Any] = optimizer.step

        def step(closure: Callable[[], Any] | None = None, **kwargs: Any) -> Any:
            optimizer._opt_called = True  # type: ignore[attr-defined]  # what an LR scheduler's wrapper records
            return self.step(original, closure, **kwargs)

        # a plain function, marked as an LR scheduler's wrapper: a scheduler made later would otherwise re-wrap it
        # through ``step.__func__``, which only bound methods have
        step._wrapped_by_lr_sched = True  # type: ignore[attr-defined]
        optimizer.step = step  # type: ignore[method-assign]
        optimizer._lit_qsum_zero = self  # type: ignore[attr-defined]

    @staticmethod
    def _buckets(params: list[torch.nn.Parameter]) -> list[list[torch.nn.Parameter]]:
        buckets: list[list[torch.nn.Parameter]] = []
        size = BUCKET_BYTES
        for p in params:
            nbytes = p.numel() * p.element_size()
            if size + nbytes > BUCKET_BYTES or p.dtype != buckets[-1][0].dtype:
                buckets.append([])
                size = 0
            buckets[-1].append(p)
            size += nbytes
        return buckets

    def owned_share(self) -> float:
        """The fraction of the adapter's elements this rank owns."""
        return sum(p.numel() for p in self.owned[self.rank]) / max(sum(p.numel() for p in self.params), 1)

    def step(self, original: Callable[..., Any], closure: Callable[[], Any] | None = None, **kwargs: Any) -> Any:
        """``original`` (the optimizer's step) on this rank's tensors, then every owner's tensors broadcast."""
        loss = None
        if closure is not None:  # Lightning's closure clips by the global norm: before any gradient is dropped
            with torch.enable_grad():
                loss = closure()
        for p in self.foreign:
            p.grad = None
        original(**kwargs)
        self._broadcast_owned()
        return loss

    @torch.no_grad()
    def _broadcast_owned(self) -> None:
        for owner, buckets in enumerate(self.buckets):
            for bucket in buckets:
                if owner == self.rank:
                    flat = torch.cat([p.detach().reshape(-1) for p in bucket])
                else:
                    flat = torch.empty(sum(p.numel() for p in bucket), dtype=bucket[0].dtype, device=bucket[0].device)
                dist.broadcast(flat, src=owner)
                if owner != self.rank:
                    torch._foreach_copy_([p.data for p in bucket],
                                         [v.view_as(p) for v, p in zip(flat.split([p.numel() for p in bucket]), bucket)])

    def full_state_dict(self) -> dict[str, Any]:
        """The optimizer's state dict as one device holds it, on rank 0 (``{}`` elsewhere); every rank must call it."""
        own = self.optimizer.state_dict()  # its "state" holds this rank's tensors, keyed by position in the groups
        position = {id(p): i for i, p in enumerate(self.params)}
        state: dict[int, dict[str, Any]] = dict(own["state"]) if self.rank == 0 else {}
        for owner in range(1, self.world):
            mine = [position[id(p)] for p in self.owned[owner]]
            meta = [None]
            if owner == self.rank:
                meta = [[(i, {k: _describe(v) for k, v in own["state"][i].items()}) for i in mine if i in own["state"]]]
            dist.broadcast_object_list(meta, src=owner, device=self.device if self.device.type == "cuda" else None)
            for i, entries in meta[0]:
                received: dict[str, Any] = {}
                for key, described in entries.items():
                    if described[0] != "tensor":
                        received[key] = described[1]
                        continue
                    _, shape, dtype, device_type = described
                    if owner == self.rank:
                        tensor = own["state"][i][key].to(self.device)
                    else:
                        tensor = torch.empty(shape, dtype=dtype, device=self.device)
                    dist.broadcast(tensor, src=owner)
                    received[key] = tensor.to(device_type)
                if self.rank == 0:
                    state[i] = received
        if self.rank != 0:
            return {}
        return {"state": {i: state[i] for i in sorted(state)}, "param_groups": own["param_groups"]}

    def drop_foreign_state(self) -> int:
        """Forget the state of the tensors this rank does not own (after loading a whole checkpoint); returns how
        many tensors' state went."""
        dropped = 0
        for p in self.foreign:
            if self.optimizer.state.pop(p, None) is not None:
                dropped += 1
        return dropped


def _describe(value: Any) -> tuple:
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), value.dtype, value.device.type)
    return ("value", value)


def sharding_of(optimizer: Optimizer) -> ShardedOptimizerState | None:
    """The ``ShardedOptimizerState`` installed on ``optimizer`` (or on the optimizer it wraps), if any."""
    inner = getattr(optimizer, "_optimizer", optimizer)  # LightningOptimizer
    return getattr(inner, "_lit_qsum_zero", None)
