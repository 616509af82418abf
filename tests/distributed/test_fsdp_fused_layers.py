"""Fused LoRA layers under FSDP: a layer whose base is an FSDP unit of its own runs through peft, with peft's output.

``qlora_auto_wrap_policy`` gives an odd-dtype frozen leaf (T5's float32 ``wo`` beside a bf16 base) its own unit; the
fused forward would read that unit's local flat shard as the weight ("mat2 must be a matrix").
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

import ddp_harness as ddp


class Block(torch.nn.Module):
    def __init__(self, wo_dtype: torch.dtype) -> None:
        super().__init__()
        self.wi = torch.nn.Linear(16, 32, bias=False).to(torch.bfloat16)
        self.wo = torch.nn.Linear(32, 16, bias=False).to(wo_dtype)  # float32 as T5 keeps it, or bf16 as lit-qsum stores it
        self.wo_dtype = wo_dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.wo(self.wi(x.to(torch.bfloat16)).to(self.wo_dtype)).float()


class Net(torch.nn.Module):
    def __init__(self, wo_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList([Block(wo_dtype), Block(wo_dtype)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


def _rank(rank: int, port: int, results, wo_dtype: torch.dtype) -> None:
    from peft import LoraConfig, get_peft_model
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    from lit_qsum.distributed.fsdp import qlora_auto_wrap_policy, unfuse_own_units
    from lit_qsum.fastpath.lora_linear import fuse_lora_layers

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        x = torch.randn(3, 16, generator=torch.Generator().manual_seed(1))
        outputs = []
        for fuse in (False, True):
            torch.manual_seed(0)
            model = get_peft_model(Net(wo_dtype), LoraConfig(r=4, target_modules=["wo"], init_lora_weights=False))
            fused = fuse_lora_layers(model, keep_weight=False)[0] if fuse else 0
            trainable = [p for p in model.parameters() if p.requires_grad]
            sharded = FSDP(model, auto_wrap_policy=qlora_auto_wrap_policy(model, ["Block"]), ignored_states=trainable,
                           device_id=torch.device("cpu"), use_orig_params=True)
            unfused = unfuse_own_units(sharded) if fuse else 0
            outputs.append((fused, unfused, sharded(x).detach()))
        results[rank] = outputs
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("wo_dtype", [torch.float32, torch.bfloat16])
def test_layers_over_their_own_fsdp_unit_are_unfused_and_match_peft(wo_dtype: torch.dtype) -> None:
    """float32 wo (transformers' layout): a unit of its own, so peft's forward again. bf16 wo (what
    ``fp32_modules_in_bf16`` stores under bf16): inside its block's unit, fused, with peft's output."""
    results = ddp.spawn_pair(_rank, wo_dtype)
    for rank in range(2):
        (_, _, plain), (fused, unfused, fast) = results[rank]
        # float32 wo beside bf16: each its own unit, unfused; bf16 wo: in the block's unit, still fused
        assert (fused, unfused) == ((2, 2) if wo_dtype == torch.float32 else (2, 0))
        # a bf16 GEMM in the fused op and in peft's rounds its last bit differently (a misread shard is far off)
        tol = {} if wo_dtype == torch.float32 else {"rtol": 1.6e-2, "atol": 2e-3}
        torch.testing.assert_close(fast, plain, **tol)
