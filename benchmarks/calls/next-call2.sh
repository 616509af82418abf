#!/usr/bin/env bash
# Prepared at the end of session 9 for the next session's second device call (nvidia-h200-x2), not yet run; see
# benchmarks/results/2026-11-30-speed-notes-6.md ("Next"). Issue #14: the one-GPU t5-xl peak measured again (session
# 8's was lost to the memory snapshot's reset; no --snapshot-step here) beside FSDP t5-xl with the root's early
# reshard, then the several-GPU tests. Issue #16, GPU 0 after that: bart-large mb64 with the opt-in seq2seq chunked
# loss against the defaults and the recipe (its peak was 10.72 GiB against the recipe's 9.91). Ends by ~545 s.
source benchmarks/calls/prelude.sh
timeout -k 5 200 python benchmarks/multi_gpu.py --skip ddp1 ddp2 --deadline-s 190 --out $W/res > $W/multi-gpu.log 2>&1
PYT="python -m pytest -m gpu -v -rA --tb=short -p no:cacheprovider -o faulthandler_timeout=0 --durations=0"
timeout -k 5 170 $PYT --timeout 160 tests/distributed/test_multi_gpu_cuda.py > $W/multi-gpu-tests.log 2>&1
echo "rc=$?" >> $W/multi-gpu-tests.log
CHUNK='"module":{"speed":{"chunked_seq2seq_loss":true}}'
CUDA_VISIBLE_DEVICES=0 TORCHINDUCTOR_CACHE_DIR=/tmp/inductor0 python benchmarks/speed.py --shapes bart-large \
  --tools hf lit-qsum --warmup 10 --steps 30 --micro-batch 64 --what speed-bart-mb64-chunked \
  --lit-variant 'default={"data":{"pad_to_multiple_of":64}}' \
  --lit-variant "chunked-loss={$CHUNK,\"data\":{\"pad_to_multiple_of\":64}}" \
  --worker-timeout 110 --deadline-s $(( $(left) - 10 )) --logs $W/logs0 --out $W/res > $W/gpu0-bart-mb64.log 2>&1
finish
