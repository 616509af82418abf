"""Live tensor memory by category over training steps, on any device (made for the CPU, where there is no allocator
statistic): a Lightning callback for ``lit-qsum fit``.

How it counts: every tensor storage alive counts its current ``nbytes()`` once.
- At train start it takes a census of what is reachable: the model's parameters and buffers (under FSDP1 the flat
  parameters' local shards and their padded unsharded buffers, whose size FSDP changes with ``storage.resize_``),
  bitsandbytes quant states, the fused LoRA layers' compute-dtype adapter copies, optimizer state.
- During the fit a ``TorchDispatchMode`` sees every op's outputs; a storage not seen before is registered with a tag
  (phase: fwd / recompute / bwd / post-bwd / opt; the module that was running; the op) and a weakref whose callback
  removes it when the storage is freed.
- Adapter gradients are re-tagged ``grad`` when autograd stores them (post-accumulate-grad hook), optimizer state
  ``optim`` after each optimizer step.
- FSDP's flat-parameter storages are read live (their size changes without an op producing them).
Whenever the total exceeds the step's peak, the live set is snapshotted; at the end of step ``--step`` the snapshot at
its peak is written, grouped by category, with the top allocation sites, to ``out`` (``-rank<r>`` for rank r > 0).

Not counted: memory that no tensor owns (gloo's internal buffers, allocator caching and fragmentation, the CUDA
caching allocator's rounding), and anything alive at train start that the census did not reach.
"""

from __future__ import annotations

import json
import weakref
from collections import defaultdict
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

GiB = 2**30


def _clean(name: str) -> str:
    for prefix in ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "base_model.model.", "model."):
        name = name.replace(prefix, "")
    return name or "(root)"


def _block_of(name: str) -> str | None:
    parts = name.split(".")
    for i in range(len(parts) - 2):
        if parts[i] in ("encoder", "decoder") and parts[i + 1] == "block":
            return ".".join(parts[: i + 3]).replace("encoder.block.", "enc").replace("decoder.block.", "dec")
    if parts[0] in ("lm_head", "shared") or name.endswith("final_layer_norm"):
        return parts[0] if parts[0] in ("lm_head", "shared") else name
    return None


class _Mode(TorchDispatchMode):
    def __init__(self, tracker: MemoryBreakdown) -> None:
        super().__init__()
        self.tracker = tracker

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        out = func(*args, **(kwargs or {}))
        self.tracker._on_op(func, out)
        return out


class MemoryBreakdown(Callback):
    """Writes the breakdown of live tensor memory at the peak of optimizer step ``step`` (see the module docstring)."""

    def __init__(self, out: str, step: int = 2, top: int = 25) -> None:
        self.out = Path(out)
        self.step = step
        self.top = top
        self.live: dict[int, list] = {}  # key -> [nbytes, tag, weakref]; nbytes fixed (non-resizable storages)
        self.fixed_total = 0
        self.resizable: dict[int, tuple[weakref.ref, str]] = {}  # key -> (weakref, tag): read live
        self.phase = "idle"
        self.module_stack: list[str] = []
        self.names: dict[int, str] = {}
        self.mode: _Mode | None = None
        self.hooks: list[Any] = []
        self.peak = 0
        self.peak_snapshot: dict[str, Any] | None = None
        self.recording = False
        self.phase_peaks: dict[str, int] = defaultdict(int)
        self.timeline: list[tuple[int, str, str, int]] = []
        self.op_index = 0
        self.start_total = 0
        self.start_breakdown: dict[str, int] = {}
        self.rank = 0
        self.params_of_grad: dict[int, str] = {}
        self.last_block = "(none)"
        self.segment_peaks: dict[str, tuple] = {}

    # ---- registration ------------------------------------------------------------------------------------------------
    def _register(self, storage: torch.UntypedStorage, tag: str, *, resizable: bool = False, retag: bool = False) -> None:
        key = storage._cdata
        if key in self.resizable:
            return
        if key in self.live:
            if retag:
                self.live[key][1] = tag
            return
        if resizable:
            self.resizable[key] = (weakref.ref(storage, self._resizable_freed(key)), tag)
            return
        size = storage.nbytes()
        entry = [size, tag, None]
        entry[2] = weakref.ref(storage, self._freed(key, entry))
        self.live[key] = entry
        self.fixed_total += size

    def _freed(self, key: int, entry: list):
        def callback(_ref: weakref.ref) -> None:
            if self.live.get(key) is entry:
                del self.live[key]
                self.fixed_total -= entry[0]
        return callback

    def _resizable_freed(self, key: int):
        def callback(_ref: weakref.ref) -> None:
            self.resizable.pop(key, None)
        return callback

    def _tensor(self, t: Any, tag: str, **kw: Any) -> None:
        if isinstance(t, torch.Tensor) and not t.is_meta:
            try:
                self._register(t.untyped_storage(), tag, **kw)
            except (RuntimeError, NotImplementedError):
                pass

    # ---- the census at train start -----------------------------------------------------------------------------------
    def _scan_fsdp(self, model: torch.nn.Module) -> None:
        """FSDP1 creates its flat parameters' shard and unsharded buffers lazily (first forward), with a full-size
        ``empty`` that it frees at once by resizing the storage to 0: track those storages by their live size."""
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP  # noqa: PLC0415

        for module in model.modules():
            if isinstance(module, FSDP) and module._handle is not None:
                unit = "(root)" if module is model else _clean(self.names.get(id(module), "?"))
                flat = module._handle.flat_param
                for attr, what in (("_local_shard", "fsdp shard"), ("_full_param_padded", "fsdp gathered"),
                                   ("_mp_shard", "fsdp mp shard")):
                    t = getattr(flat, attr, None)
                    if not isinstance(t, torch.Tensor):
                        continue
                    st = t.untyped_storage()
                    entry = self.live.pop(st._cdata, None)
                    if entry is not None:
                        self.fixed_total -= entry[0]
                    self._register(st, f"{what}|{unit}", resizable=True)

    def _census(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:  # noqa: PLR0912 - one pass over kinds
        model = pl_module.model
        self._scan_fsdp(model)
        for name, p in model.named_parameters():
            name = _clean(name)
            if p.requires_grad:
                self._tensor(p, "adapter param")
                self.params_of_grad[id(p)] = name
            else:
                kind = "base 4-bit" if type(p).__name__ == "Params4bit" else f"base {str(p.dtype).replace('torch.', '')}"
                if "shared" in name or "lm_head" in name or "embed" in name:
                    kind = "base embeddings/lm_head"
                self._tensor(p, kind)
        for _, b in model.named_buffers():
            self._tensor(b, "buffers")
        for module in model.modules():
            state = getattr(getattr(module, "weight", None), "quant_state", None) or getattr(module, "quant_state", None)
            if state is not None:
                for t in (state.absmax, state.code, getattr(state, "offset", None)):
                    self._tensor(t, "quant state")
                if state.nested:
                    self._tensor(state.state2.absmax, "quant state")
                    self._tensor(state.state2.code, "quant state")
            plan = module.__dict__.get("_lit_qsum_plan")
            if plan is not None and plan.copies is not None:
                for t in plan.copies:
                    self._tensor(t, "adapter bf16 copies", retag=True)
        for optimizer in trainer.optimizers:
            self._tag_optimizer(optimizer)
        for p in (p for p in model.parameters() if p.requires_grad):
            if p.grad is not None:
                self._tensor(p.grad, "grad", retag=True)

    def _tag_optimizer(self, optimizer: Any) -> None:
        inner = getattr(optimizer, "optimizer", optimizer)
        for state in inner.state.values():
            for v in state.values():
                self._tensor(v, "optimizer state", retag=True)

    # ---- per op ------------------------------------------------------------------------------------------------------
    def total(self) -> int:
        return self.fixed_total + sum(ref().nbytes() for ref, _ in self.resizable.values() if ref() is not None)

    def _on_op(self, func: Any, out: Any) -> None:
        self.op_index += 1
        where = self.module_stack[-1] if self.module_stack else "(outside modules)"
        phase = self.phase
        if phase == "bwd" and self.module_stack:
            phase = "recompute"
        tag = f"{phase}|{where}|{func.__name__}"
        for t in tree_flatten(out)[0]:
            self._tensor(t, tag)
        if not self.recording:
            return
        for name in reversed(self.module_stack):
            block = _block_of(name)
            if block is not None:
                self.last_block = block
                break
        group = "fwd" if phase == "fwd" else ("bwd" if phase in ("bwd", "recompute") else phase)
        segment = f"{group} {self.last_block}" if group in ("fwd", "bwd") else group
        total = self.total()
        if total > self.segment_peaks.get(segment, (0,))[0]:
            self.segment_peaks[segment] = (total, [(e[0], e[1]) for e in self.live.values()],
                                           [(ref().nbytes(), tag) for ref, tag in self.resizable.values() if ref()])
        self.phase_peaks[phase] = max(self.phase_peaks[phase], total)
        if self.op_index % 50 == 0:
            self.timeline.append((self.op_index, phase, where, total))
        if total > self.peak:
            self.peak = total
            self.peak_snapshot = {
                "op": self.op_index, "phase": phase, "module": where, "func": func.__name__,
                "fixed": [(e[0], e[1]) for e in self.live.values()],
                "resizable": [(ref().nbytes(), tag) for ref, tag in self.resizable.values() if ref() is not None],
            }

    # ---- hooks -------------------------------------------------------------------------------------------------------
    def _pre(self, module: torch.nn.Module, *_: Any) -> None:
        self.module_stack.append(self.names.get(id(module), type(module).__name__))

    def _post(self, module: torch.nn.Module, *_: Any) -> None:
        if self.module_stack:
            self.module_stack.pop()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.rank = trainer.global_rank
        self.names = {id(m): _clean(n) for n, m in pl_module.named_modules()}
        self._census(trainer, pl_module)
        self.start_total = self.total()
        self.start_breakdown = self._group([(e[0], e[1]) for e in self.live.values()],
                                           [(ref().nbytes(), tag) for ref, tag in self.resizable.values() if ref()])
        for p in (p for p in pl_module.model.parameters() if p.requires_grad):
            self.hooks.append(p.register_post_accumulate_grad_hook(self._on_grad))
        self.hooks.append(torch.nn.modules.module.register_module_forward_pre_hook(self._pre))
        self.hooks.append(torch.nn.modules.module.register_module_forward_hook(self._post, always_call=True))
        self.mode = _Mode(self)
        self.mode.__enter__()

    def _on_grad(self, p: torch.Tensor) -> None:
        if p.grad is not None:
            self._tensor(p.grad, "grad", retag=True)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        self.phase = "fwd"
        self.module_stack.clear()
        self._scan_fsdp(pl_module.model)
        if trainer.global_step == self.step and not self.recording and self.peak_snapshot is None:
            self.recording = True
            self.peak = 0
            self.step_start_total = self.total()
            self.step_start = self._group([(e[0], e[1]) for e in self.live.values()],
                                          [(ref().nbytes(), tag) for ref, tag in self.resizable.values() if ref()])

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        self.phase = "bwd"
        self.module_stack.clear()
        self._scan_fsdp(pl_module.model)

    def on_after_backward(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.phase = "post-bwd"

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        self.phase = "opt"

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.phase = "idle"
        for optimizer in trainer.optimizers:
            self._tag_optimizer(optimizer)
        for module in pl_module.model.modules():
            plan = module.__dict__.get("_lit_qsum_plan")
            if plan is not None and plan.copies is not None:
                for t in plan.copies:
                    self._tensor(t, "adapter bf16 copies", retag=True)
        if self.recording and trainer.global_step > self.step:
            self.recording = False
            self._write()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        import hashlib  # noqa: PLC0415

        digest = hashlib.sha256()
        for name, p in sorted((n, p) for n, p in pl_module.model.named_parameters() if p.requires_grad):
            digest.update(_clean(name).encode())
            digest.update(p.detach().float().cpu().numpy().tobytes())
        out = self.out if self.rank == 0 else self.out.with_name(f"{self.out.stem}-rank{self.rank}{self.out.suffix}")
        if out.exists():
            result = json.loads(out.read_text())
            result["adapter_sha256_at_end"] = digest.hexdigest()
            result["global_step_at_end"] = trainer.global_step
            out.write_text(json.dumps(result, indent=1))
        if self.mode is not None:
            self.mode.__exit__(None, None, None)
            self.mode = None
        for h in self.hooks:
            h.remove()
        self.hooks.clear()

    # ---- the report --------------------------------------------------------------------------------------------------
    @staticmethod
    def _category(tag: str) -> str:
        parts = tag.split("|")
        if len(parts) == 1:
            return tag
        if parts[0] in ("fsdp shard", "fsdp gathered", "fsdp mp shard"):
            unit = parts[1]
            kind = "root unit" if unit == "(root)" else "block units"
            return f"{parts[0]} ({kind})"
        phase, module, func = parts[0], parts[1], parts[2]
        if phase == "fwd":
            return "fwd: saved in blocks" if _block_of(module) not in (None, "lm_head", "shared") and "block" in module \
                else "fwd: saved outside blocks (embeddings, lm_head, loss)"
        if phase == "recompute":
            return "recompute: dequantized weights" if func.startswith("dequantize") else "recompute: activations"
        return f"{phase} tensors"

    def _group(self, fixed: list, resizable: list) -> dict[str, int]:
        groups: dict[str, int] = defaultdict(int)
        for size, tag in list(fixed) + list(resizable):
            groups[self._category(tag)] += size
        return dict(sorted(groups.items(), key=lambda kv: -kv[1]))

    def _write(self) -> None:
        snap = self.peak_snapshot or {"fixed": [], "resizable": []}
        groups = self._group(snap["fixed"], snap["resizable"])
        sites: dict[str, int] = defaultdict(int)
        for size, tag in snap["fixed"]:
            parts = tag.split("|")
            if len(parts) == 3:
                sites[tag] += size
        for size, tag in snap["resizable"]:
            if size:
                sites[tag] += size
        ranked = sorted(sites.items(), key=lambda kv: -kv[1])
        result = {
            "rank": self.rank,
            "step": self.step,
            "train_start_gib": self.start_total / GiB,
            "train_start": {k: v / GiB for k, v in self.start_breakdown.items()},
            "step_start_gib": self.step_start_total / GiB,
            "step_start": {k: v / GiB for k, v in self.step_start.items()},
            "peak_gib": self.peak / GiB,
            "peak_at": {k: snap.get(k) for k in ("op", "phase", "module", "func")},
            "at_peak": {k: v / GiB for k, v in groups.items()},
            "phase_peaks_gib": {k: v / GiB for k, v in self.phase_peaks.items()},
            "segments": {k: {"peak_gib": v[0] / GiB, "at_peak": {c: n / GiB for c, n in self._group(v[1], v[2]).items()}}
                         for k, v in self.segment_peaks.items()},
            "top_sites_at_peak_mib": [(tag, round(size / 2**20, 2)) for tag, size in ranked[: self.top]],
            "timeline": self.timeline,
        }
        out = self.out if self.rank == 0 else self.out.with_name(f"{self.out.stem}-rank{self.rank}{self.out.suffix}")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))
