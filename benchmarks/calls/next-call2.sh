#!/usr/bin/env bash
# Prepared in session 10 for a next session's device call (nvidia-h200-x2), not yet run; see
# benchmarks/results/2026-11-30-speed-notes-7.md ("Next"). Issue #14: FSDP t5-xl with session 10's FSDP defaults
# (ZeRO-1 for the adapter, saved activations offloaded to pinned host memory) and with each one off, and without
# backward prefetch, against the one-GPU peak (3.51 GiB in session 10). The several-GPU tests are in next-call3.sh.
# Ends by ~545 s.
source benchmarks/calls/prelude.sh
S_=--trainer.strategy.init_args
timeout -k 5 510 python benchmarks/multi_gpu.py --skip ddp1 ddp2 --deadline-s 500 --what multi-gpu-fsdp-memory \
  --fsdp-variant "no-zero=$S_.shard_optimizer_state false" \
  --fsdp-variant "no-offload=$S_.offload_activations false" \
  --fsdp-variant "no-prefetch=$S_.backward_prefetch null" --out $W/res > $W/multi-gpu.log 2>&1
finish
