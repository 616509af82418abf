"""Changes applied in the measured processes only when their environment variable is set (nothing here edits lit_qsum).

FM_EFFICIENT_ATTENTION=1: on the CPU, SDPA with T5's float bias runs the math path, which keeps the attention
    probabilities (``[B, H, Lq, Lk]``, several copies) for backward; a GPU runs the memory-efficient kernel, which keeps
    only q, k, v, the bias, the output and a log-sum-exp. This swaps ``F.scaled_dot_product_attention`` for an
    autograd function that saves exactly those and recomputes the probabilities in backward (head chunks of 4, so its
    own transient stays small), with the same dropout mask in forward and backward. Memory-shape emulation only.
FM_RESHARD_ROOT=1, FM_NO_ADAPTER_COPIES=1: prototypes 1 and 4 of the write-up (the root FSDP unit resharded once its
    own layers' backward is done; no bf16 adapter copies under FSDP). Both have since landed in lit_qsum and are
    always on under QLoraFSDPStrategy (``fsdp.reshard_root_after_its_own_backward``, ``fsdp.speed_under``), so these
    variables now only say so; the write-up's records with them were made before.
FM_ZERO1=1: prototype 3, AdamW state for half of the adapter tensors per rank (ZeRO-1 for the adapter; rank r updates
    its half, then broadcasts). Memory accounting only: see the write-up for what a real implementation needs.
"""

from __future__ import annotations

import os

import torch

_CHUNK = 4


class _EfficientAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, mask, p, scale, causal, rng_state):  # noqa: ANN001
        s = scale if scale is not None else q.shape[-1] ** -0.5
        out = torch.empty(q.shape[:-1] + (v.shape[-1],), dtype=q.dtype, device=q.device)
        lse = torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device)
        for h0 in range(0, q.shape[1], _CHUNK):
            probs, chunk_lse = _probs(q, k, mask, s, causal, h0)
            lse[:, h0:h0 + _CHUNK] = chunk_lse
            if p > 0:
                probs = probs * _keep(probs, p, rng_state, h0) / (1 - p)
            out[:, h0:h0 + _CHUNK] = (probs.to(v.dtype) @ v[:, h0:h0 + _CHUNK])
        ctx.save_for_backward(q, k, v, mask, out, lse)
        ctx.p, ctx.s, ctx.causal, ctx.rng_state = p, s, causal, rng_state
        return out

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001
        q, k, v, mask, out, lse = ctx.saved_tensors
        p, s = ctx.p, ctx.s
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        need_mask = mask is not None and ctx.needs_input_grad[3]
        dmask = torch.empty(mask.shape, dtype=mask.dtype) if need_mask else None
        for h0 in range(0, q.shape[1], _CHUNK):
            sl = slice(h0, h0 + _CHUNK)
            probs, _ = _probs(q, k, mask, s, ctx.causal, h0)
            go = grad[:, sl].float()
            dp = go @ v[:, sl].float().transpose(-1, -2)
            if p > 0:
                keep = _keep(probs, p, ctx.rng_state, h0) / (1 - p)
                dv[:, sl] = ((probs * keep).transpose(-1, -2) @ go).to(v.dtype)
                dp = dp * keep
            else:
                dv[:, sl] = (probs.transpose(-1, -2) @ go).to(v.dtype)
            d = (go * out[:, sl].float()).sum(-1, keepdim=True)
            ds = probs * (dp - d)
            dq[:, sl] = (ds @ k[:, sl].float() * s).to(q.dtype)
            dk[:, sl] = (ds.transpose(-1, -2) @ q[:, sl].float() * s).to(k.dtype)
            if need_mask:
                if dmask.shape[1] == 1 or dmask.shape[0] != ds.shape[0]:
                    raise NotImplementedError("a broadcast attention bias that requires grad")
                dmask[:, sl] = ds.to(dmask.dtype)
        return dq, dk, dv, dmask, None, None, None, None


def _probs(q, k, mask, s, causal, h0):  # noqa: ANN001, ANN202
    sl = slice(h0, h0 + _CHUNK)
    scores = q[:, sl].float() @ k[:, sl].float().transpose(-1, -2) * s
    if mask is not None:
        m = mask[:, sl] if mask.shape[1] > 1 else mask
        scores = scores.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else scores + m.float()
    if causal:
        lq, lk = scores.shape[-2:]
        scores = scores.masked_fill(torch.ones(lq, lk, dtype=torch.bool).triu(lk - lq + 1), float("-inf"))
    lse = torch.logsumexp(scores, -1)
    return torch.exp(scores - lse[..., None]), lse


def _keep(probs, p, rng_state, h0):  # noqa: ANN001, ANN202
    gen = torch.Generator().manual_seed(int(rng_state) + h0)
    return (torch.rand(probs.shape, generator=gen) >= p).to(probs.dtype)


def _sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):  # noqa: ANN001, ANN202
    if query.device.type != "cpu" or enable_gqa or query.dim() != 4:
        return _orig_sdpa(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale,
                          enable_gqa=enable_gqa)
    seed = int(torch.randint(0, 2**31 - 1, (1,)))
    return _EfficientAttention.apply(query, key, value, attn_mask, float(dropout_p), scale, is_causal, seed)


_orig_sdpa = torch.nn.functional.scaled_dot_product_attention
if os.environ.get("FM_EFFICIENT_ATTENTION") == "1":
    torch.nn.functional.scaled_dot_product_attention = _sdpa


# ---- prototypes of the proposed changes (each behind its variable) ----------------------------------------------------
def _zero1(optimizer) -> None:  # noqa: ANN001
    """Prototype 3 (FM_ZERO1): AdamW state for about half of the adapter's elements per rank (2 ranks).

    Before the step, each rank drops the (already averaged) gradients of the tensors it does not own, so AdamW makes
    and updates state for its own tensors only; after it, every tensor is broadcast from its owner. Training is the
    same as before (every rank applies the same update it would have computed). Not done here: saving/loading the
    partitioned optimizer state, which a real implementation must gather for lit-qsum's strategy-independent
    checkpoints."""
    import torch.distributed as dist  # noqa: PLC0415

    inner = getattr(optimizer, "optimizer", optimizer)
    params = [p for g in inner.param_groups for p in g["params"]]
    world, rank = dist.get_world_size(), dist.get_rank()
    loads, owner = [0] * world, {}
    for p in sorted(params, key=lambda p: -p.numel()):
        r = loads.index(min(loads))
        owner[p] = r
        loads[r] += p.numel()
    step = inner.step

    def sharded_step(closure=None):  # noqa: ANN001, ANN202
        # Lightning's closure runs on_before_optimizer_step and clips by the global norm: before any gradient is dropped
        out = None
        if closure is not None:
            with torch.enable_grad():
                out = closure()
        for p in params:
            if owner[p] != rank:
                p.grad = None
        step()
        with torch.no_grad():
            for r in range(world):  # one broadcast per owner: its tensors packed in one flat buffer
                mine = [p for p in params if owner[p] == r]
                flat = torch.cat([p.detach().reshape(-1) for p in mine]) if r == rank else torch.empty(
                    sum(p.numel() for p in mine), dtype=mine[0].dtype, device=mine[0].device)
                dist.broadcast(flat, src=r)
                if r != rank:
                    for p, v in zip(mine, flat.split([p.numel() for p in mine])):
                        p.copy_(v.view_as(p))
        return out

    inner.step = sharded_step


def _install_prototypes() -> None:
    flags = {k: os.environ.get(k) == "1" for k in ("FM_RESHARD_ROOT", "FM_NO_ADAPTER_COPIES", "FM_ZERO1",
                                                   "FM_NO_BACKWARD_PREFETCH")}
    if not any(flags.values()):
        return
    from lit_qsum.distributed import fsdp  # noqa: PLC0415

    for landed in ("FM_RESHARD_ROOT", "FM_NO_ADAPTER_COPIES"):
        if flags[landed]:
            print(f"prototype: {landed} has landed in lit_qsum and is on under FSDP anyway; nothing to patch")
    if flags["FM_NO_BACKWARD_PREFETCH"]:
        import functools  # noqa: PLC0415

        init = fsdp.QLoraFSDPStrategy.__init__

        @functools.wraps(init)
        def __init__(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202, N807
            kwargs["backward_prefetch"] = None
            init(self, *args, **kwargs)

        fsdp.QLoraFSDPStrategy.__init__ = __init__
    if flags["FM_ZERO1"]:
        from lit_qsum.module import SummarizationModule  # noqa: PLC0415

        on_train_start = SummarizationModule.on_train_start

        def patched(self):  # noqa: ANN001, ANN202
            on_train_start(self)
            if self.sharded:
                _zero1(self.trainer.optimizers[0])
                print("prototype: ZeRO-1 AdamW state for the adapter")

        SummarizationModule.on_train_start = patched


_install_prototypes()
