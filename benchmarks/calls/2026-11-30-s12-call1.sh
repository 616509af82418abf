#!/usr/bin/env bash
# Ran in session 12 as call 1 (nvidia-h200-x2, 508 s): records 2026-11-30-multi-gpu-s12; the cpu-load run was cut at its 120 s timeout while wrapping, after ~57 s of quantizing on the host
# Prepared in session 11 for a next session's device call (nvidia-h200-x2), not yet run; see
# benchmarks/results/2026-11-30-speed-notes-8.md ("Next"). Issue #14: DDP t5-large 1 vs 2 GPUs with today's defaults
# (session 11's ddp2 was stopped by a 60 s limit; DDP runs now get 90 s); FSDP t5-xl and one GPU with the three peaks
# kept apart (loading, the sanity check's validation, training); FSDP loading the base on the host (load_on_cpu: the
# loading peak should fall below the training peak), FSDP without the activation offload and without ZeRO-1 (each
# one's share of the training peak; the deadline drops the last first). Ends by ~560 s. The several-GPU tests:
# next-call2.sh.
source benchmarks/calls/prelude.sh
export BUDGET=560
S_=--trainer.strategy.init_args
timeout -k 5 550 python benchmarks/multi_gpu.py --deadline-s 540 --what multi-gpu-s12 \
  --fsdp-variant "cpu-load=$S_.load_on_cpu true" \
  --fsdp-variant "no-offload=$S_.offload_activations false" \
  --fsdp-variant "no-zero=$S_.shard_optimizer_state false" --out $W/res > $W/multi-gpu.log 2>&1
finish
