"""apply_speedups: what it switches, what it reports, and that process-wide switches are put back."""

from __future__ import annotations

import torch

from lit_qsum.fastpath import apply_speedups, restore_speedups
from lit_qsum.settings import SpeedSettings


def test_cudnn_attention_is_switched_off_for_cuda_and_restored() -> None:
    model = torch.nn.Linear(4, 4)
    assert torch.backends.cuda.cudnn_sdp_enabled()
    report = apply_speedups(model, SpeedSettings(fused_lora=False), device=torch.device("cuda"), gradient_checkpointing=False)
    try:
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert any("cuDNN attention off" in line for line in report)
    finally:
        restore_speedups()
    assert torch.backends.cuda.cudnn_sdp_enabled()


def test_cudnn_attention_can_be_kept_and_cpu_runs_change_nothing_global() -> None:
    model = torch.nn.Linear(4, 4)
    kept = apply_speedups(model, SpeedSettings(fused_lora=False, cudnn_attention=True), device=torch.device("cuda"),
                          gradient_checkpointing=False)
    cpu = apply_speedups(model, SpeedSettings(fused_lora=False), device=torch.device("cpu"), gradient_checkpointing=False)
    assert kept == [] and cpu == []
    assert torch.backends.cuda.cudnn_sdp_enabled()


def test_compile_is_skipped_on_cpu_with_a_reason() -> None:
    model = torch.nn.Linear(4, 4)
    report = apply_speedups(model, SpeedSettings(fused_lora=False, compile=True), device=torch.device("cpu"),
                            gradient_checkpointing=False)
    assert any("speed.compile skipped" in line for line in report)
    assert "_compiled_call_impl" not in model.__dict__
