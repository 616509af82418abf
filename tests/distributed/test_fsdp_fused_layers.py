"""Fused LoRA layers under FSDP: a layer whose base is an FSDP unit of its own runs through peft, with peft's output.

``qlora_auto_wrap_policy`` gives an odd-dtype frozen leaf (T5's float32 ``wo`` beside a bf16 base) its own unit; the
fused forward would read that unit's local flat shard as the weight ("mat2 must be a matrix").
"""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


class Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.wi = torch.nn.Linear(16, 32, bias=False).to(torch.bfloat16)
        self.wo = torch.nn.Linear(32, 16, bias=False)  # float32, as T5 keeps it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.wo(self.wi(x.to(torch.bfloat16)).float())


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList([Block(), Block()])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


def _rank(rank: int, port: int, results) -> None:
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
            model = get_peft_model(Net(), LoraConfig(r=4, target_modules=["wo"], init_lora_weights=False))
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
def test_layers_over_their_own_fsdp_unit_are_unfused_and_match_peft() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(_rank, args=(port, results), nprocs=2)
    for rank in range(2):
        (_, _, plain), (fused, unfused, fast) = results[rank]
        assert (fused, unfused) == (2, 2)  # each wo is its own unit (float32 beside bf16): peft's forward again
        torch.testing.assert_close(fast, plain)
