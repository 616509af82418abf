"""The multi-process checks on two CUDA GPUs (NCCL, 4-bit bitsandbytes weights, bf16): what the CPU tests can't reach.

  python -m pytest -q -m gpu tests/distributed/test_multi_gpu_cuda.py        # on a machine with 2+ GPUs, ~3 minutes

The demo-sized model, QLoRA with bfloat16-stored 4-bit weights, bf16-mixed; DDP with a fake OOM on rank 1, FSDP with
real generate() in validation and a checkpoint that resumes under DDP.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import ddp_harness as ddp

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs"),
]
GPU = ["--trainer.accelerator", "gpu", "--trainer.precision", "bf16-mixed", "--model.backend", "qlora",
       "--model.quantization.bnb_4bit_quant_storage", "bfloat16", "--model.quantization.bnb_4bit_compute_dtype", "bfloat16"]
DDP = ["--trainer.strategy", "ddp"]  # not ddp_fork: CUDA can't be forked once initialized
FSDP = ["--config", str(ddp.HERE / "fsdp_cpu.yaml")]
CKPT = Path("outputs") / "demo" / "checkpoints" / "step2.ckpt"


def test_ddp_on_two_gpus_recovers_an_oom_on_one_rank(tmp_path: Path) -> None:
    # From step 0: its first micro-batch (full size, the graphs' eager warm-up) is the first forward the fake sees.
    # From step 1 (the CPU test's choice), CUDA-graph replays of step 0's shapes never call the loss in Python, so the
    # first forward it saw could be a short last batch, and every size from there up failed (session 8: 4 -> 1).
    ddp.run(tmp_path, "fit", *GPU, *DDP, FAKE_OOM_RANK="1", FAKE_OOM_STEP="0")
    reports = ddp.records(tmp_path)
    assert [(r["micro_batch_limit"], r["accumulate_grad_batches"], r["recoveries"]) for r in reports] == [(2, 4, 1)] * 2
    assert all(r["metrics"]["val/num_examples"] == ddp.N_EVAL for r in reports)
    ends = [ddp.weights(tmp_path, r)["end"] for r in range(ddp.WORLD)]
    assert all(torch.equal(ends[0][k], ends[1][k]) for k in ends[0])


def test_fsdp_on_two_gpus_trains_validates_checkpoints_and_resumes_under_ddp(tmp_path: Path) -> None:
    fsdp_dir, resumed_dir = tmp_path / "fsdp", tmp_path / "ddp-from-fsdp"
    ddp.run(fsdp_dir, "fit", *FSDP, *GPU, FAKE_GENERATE="")  # real generate() under FSDP
    reports = ddp.records(fsdp_dir)
    assert all(r["global_step"] == 3 and r["metrics"]["val/num_examples"] == ddp.N_EVAL for r in reports)
    ends = [ddp.weights(fsdp_dir, r)["end"] for r in range(ddp.WORLD)]
    assert all(torch.equal(ends[0][k], ends[1][k]) for k in ends[0])
    assert (fsdp_dir / CKPT).with_suffix(".adapter").is_dir()
    ddp.run(resumed_dir, "fit", *GPU, *DDP, "--ckpt_path", str(fsdp_dir / CKPT), FAKE_GENERATE="")
    resumed = ddp.records(resumed_dir)[0]
    assert resumed["first_step"] == 2 and resumed["global_step"] == 3


def test_fsdp_loading_the_base_on_the_host_trains_as_loading_it_on_the_gpus(tmp_path: Path) -> None:
    # load_on_cpu (the default): each rank keeps the base (quantized on its GPU) in host memory and FSDP moves each
    # unit to its GPU as it shards it
    runs = {"gpu": tmp_path / "gpu-load", "cpu": tmp_path / "cpu-load"}
    ddp.run(runs["gpu"], "fit", *FSDP, *GPU, "--trainer.strategy.init_args.load_on_cpu", "false")
    ddp.run(runs["cpu"], "fit", *FSDP, *GPU, "--trainer.strategy.init_args.load_on_cpu", "true")
    ends = {how: ddp.weights(path, 0)["end"] for how, path in runs.items()}
    assert ends["gpu"].keys() == ends["cpu"].keys()
    assert all(torch.equal(ends["cpu"][k], ends["gpu"][k]) for k in ends["gpu"])
    assert all(r["global_step"] == 3 for r in ddp.records(runs["cpu"]))
