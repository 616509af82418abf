#!/usr/bin/env bash
# Ran 2026-11-30 15:16 UTC as session 11 call 1 on nvidia-h200 (422 s): record speed-unsloth-split; logs ../results/logs/2026-11-30-s11-call1-*
# Prepared in session 9, extended in session 11; a one-GPU call (nvidia-h200). See
# benchmarks/results/2026-11-30-speed-notes-6.md ("Unsloth backend: where the 24% goes"). Issue #16: the Unsloth
# backend at 76% of the plain Unsloth loop with the same GPU time per token; the extra host time sits in the forward.
# Split: the backend as is, with its backward outside autocast (Lightning runs a manual backward inside
# training_step's autocast; the plain loop does not), without fused AdamW (no sync-free step), and the plain loop,
# with CPU+CUDA tables, the host's CUDA runtime calls, and the timelines of the backend and the loop. Ends by ~530 s.
source benchmarks/calls/prelude.sh
export BUDGET=530
export CUDA_VISIBLE_DEVICES=0 TORCHINDUCTOR_CACHE_DIR=/tmp/inductor0
nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv > $W/gpu.txt
LIT_QSUM_SPEED_PROFILE=$W/prof LIT_QSUM_SPEED_TRACE=unsloth-backend,plain-loop python benchmarks/speed.py \
  --shapes qwen2.5-1.5b --tools lit-qsum unsloth --warmup 10 --steps 30 --what speed-unsloth-split \
  --lit-variant 'unsloth-backend={"module":{"backend":"unsloth"}}' \
  --lit-variant 'unsloth-backend-bwd-outside-autocast={"module":{"backend":"unsloth","speed":{"backward_outside_autocast":true}}}' \
  --lit-variant 'unsloth-backend-unfused-adamw={"module":{"backend":"unsloth","speed":{"fused_optimizer":false}}}' \
  --worker-timeout 170 --deadline-s $(( $(left) - 10 )) --logs $W/logs0 --out $W/res > $W/gpu0-unsloth.log 2>&1
finish
