#!/usr/bin/env bash
# Prepared in session 9, carried over (not run in session 10, whose device time went to the seq2seq targets) as the
# next session's first device call (nvidia-h200-x2); see
# benchmarks/results/2026-11-30-speed-notes-6.md ("Unsloth backend: where the 24% goes"). Issue #16: the Unsloth
# backend at 76% of the plain Unsloth loop with the same GPU time per token; the extra host time sits in Unsloth's
# compiled forward region of each layer. Split: the backend as is, the backend without fused AdamW (no sync-free step)
# and the plain loop, with CPU+CUDA tables. GPU 1 stays idle, so no
# neighbour's compile shares the host (session 9 saw the host-bound figures move with it). Ends by ~545 s.
source benchmarks/calls/prelude.sh
export CUDA_VISIBLE_DEVICES=0 TORCHINDUCTOR_CACHE_DIR=/tmp/inductor0
LIT_QSUM_SPEED_PROFILE=$W/prof python benchmarks/speed.py --shapes qwen2.5-1.5b --tools lit-qsum unsloth --warmup 10 \
  --steps 30 --what speed-unsloth-split \
  --lit-variant 'unsloth-backend={"module":{"backend":"unsloth"}}' \
  --lit-variant 'unsloth-backend-unfused-adamw={"module":{"backend":"unsloth","speed":{"fused_optimizer":false}}}' \
  --worker-timeout 170 --deadline-s $(( $(left) - 10 )) --logs $W/logs0 --out $W/res > $W/gpu0-unsloth.log 2>&1
finish
