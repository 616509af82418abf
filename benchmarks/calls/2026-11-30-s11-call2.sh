#!/usr/bin/env bash
# Ran 2026-11-30 15:25 UTC as session 11 call 2 on nvidia-h200 (426 s): records speed-unsloth-ab-1, speed-unsloth-ab-2; logs ../results/logs/2026-11-30-s11-call2-*
# Session 11, one-GPU call (nvidia-h200). Issue #16: the Unsloth backend against the plain Unsloth loop, A/B twice,
# now over the same batches (the loop sets the sampler's epoch as Lightning does; call 1's loop ran 6% fewer tokens
# in its window). Call 1 (alone on the host): backend 16.2k, plain loop 17.3k tokens/s (94%). Ends by ~500 s.
source benchmarks/calls/prelude.sh
export BUDGET=500
export CUDA_VISIBLE_DEVICES=0 TORCHINDUCTOR_CACHE_DIR=/tmp/inductor0
for i in 1 2; do
  python benchmarks/speed.py --shapes qwen2.5-1.5b --tools lit-qsum unsloth --warmup 10 --steps 40 \
    --what speed-unsloth-ab-$i --lit-variant 'unsloth-backend={"module":{"backend":"unsloth"}}' \
    --worker-timeout 150 --deadline-s $(( $(left) - (i == 1 ? 200 : 5) )) --logs $W/logs$i --out $W/res > $W/ab-$i.log 2>&1
done
finish
