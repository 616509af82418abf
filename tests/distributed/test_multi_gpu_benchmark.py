"""benchmarks/multi_gpu.py --smoke: the GPU benchmark's every path (DDP on 1 and 2 processes, FSDP with validation and a
checkpoint, the one-process run FSDP's memory is compared with, the result files) on the CPU, so its first GPU run is
not its first run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_smoke_run_writes_a_record_per_run_and_the_table(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # the next GPU calls' FSDP splits, both in one variant here
    variant = ("no-zero=--trainer.strategy.init_args.shard_optimizer_state false "
               "--trainer.strategy.init_args.backward_prefetch null")
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "multi_gpu.py"), "--smoke", "--out", str(tmp_path),
                           "--fsdp-variant", variant], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [results] = tmp_path.glob("*-multi-gpu.json")
    records = json.loads(results.read_text())
    assert [(r["strategy"], r["gpus"], r["variant"]) for r in records] == [
        ("ddp", 1, "default"), ("ddp", 2, "default"), ("fsdp", 2, "default"), ("single", 1, "default"), ("fsdp", 2, "no-zero")]
    flag = records[4]["command"].index("--trainer.strategy.init_args.shard_optimizer_state")
    assert records[4]["command"][flag + 1] == "false" and records[4]["command"][flag + 3] == "null"
    for r in records:
        assert r["tool"] == "lit-qsum" and r["tokens_per_s"] > 0 and r["step_time_s"] > 0
        assert len(r["peak_allocated_gib_per_gpu"]) == r["gpus"] and "peak_allocated_gib" in r
        assert len(r["allocated_at_train_start_gib_per_gpu"]) == r["gpus"]  # what the placed (sharded) model holds
        # the peaks before training (loading + sharding, the sanity check's validation) are kept apart
        assert len(r["peak_allocated_loading_gib_per_gpu"]) == len(r["peak_allocated_sanity_validation_gib_per_gpu"]) == r["gpus"]
        assert {"shape", "gpu", "date", "micro_batch", "versions", "variant", "strategy", "gpus"} <= set(r)
        assert r["measured_steps"] == 3
        # no CUDA graphs nor events on the CPU: no steady figure, but the capture count went through the reduce
        assert r["timed_steps_with_a_capture"] == 0 and r["steady_tokens_per_s"] is None
    assert records[2]["checkpoint"]["ok"], records[2]["checkpoint"]
    table = (tmp_path / results.name.replace(".json", ".md")).read_text()
    assert "| t5-tiny | fsdp | default | 2 |" in table and "| t5-tiny | fsdp | no-zero | 2 |" in table
    assert "2 GPUs / 1 GPU" in table
    assert records[0]["command"][2:6] == ["lit_qsum", "fit", "--config", str(REPO / "configs" / "multi-gpu.yaml")]
