#!/usr/bin/env bash
# Prepared in session 11 for a next session's one-GPU call (nvidia-h200), not yet run: two more same-batch A/B pairs
# of the Unsloth backend against the plain Unsloth loop (session 11 call 2: 102.4% and 92.0%, pooled 96.9%), to narrow
# the spread; pool all four pairs. Ends by ~500 s.
source benchmarks/calls/prelude.sh
export BUDGET=500
export CUDA_VISIBLE_DEVICES=0 TORCHINDUCTOR_CACHE_DIR=/tmp/inductor0
for i in 1 2; do
  python benchmarks/speed.py --shapes qwen2.5-1.5b --tools lit-qsum unsloth --warmup 10 --steps 40 \
    --what speed-unsloth-ab-s12-$i --lit-variant 'unsloth-backend={"module":{"backend":"unsloth"}}' \
    --worker-timeout 150 --deadline-s $(( $(left) - (i == 1 ? 200 : 5) )) --logs $W/logs$i --out $W/res > $W/ab-$i.log 2>&1
done
finish
