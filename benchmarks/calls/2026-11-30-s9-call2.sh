#!/usr/bin/env bash
# Run in session 9 as call 2 (510 s); records benchmarks/results/2026-11-30-multi-gpu-s9.*, 2026-11-30-speed-t5-mb{16,64}-cudnn.*, logs benchmarks/results/logs/2026-11-30-s9-call2-* (per-run t5-large logs: both GPUs wrote the same names). Both recipe runs were killed at their --worker-timeout after writing their figures (the record keeps the error beside them).
# Session 9, call 2 (nvidia-h200-x2). Issue #14 first: benchmarks/multi_gpu.py's four runs with today's defaults (DDP
# t5-large on 1 and 2 GPUs; FSDP t5-xl on 2 with each frozen block resharded after its own backward, against
# 3.46 GiB per GPU in session 8; the one-GPU t5-xl QLoRA peak). Then, one GPU each (issue #16):
# GPU 0: t5-large mb16, recipe / default / cuDNN attention / cuDNN attention + summaries padded to 16 (call 1 gave the
#        cuDNN variant 26.6 against 29.0 GPU µs/token, without a same-call recipe);
# GPU 1: t5-large mb64, recipe / default / cuDNN attention (call 1's lit-qsum run was cut by its deadline).
source benchmarks/calls/prelude.sh
timeout -k 5 260 python benchmarks/multi_gpu.py --deadline-s 250 --out $W/res > $W/multi-gpu.log 2>&1
PAD='"data":{"pad_to_multiple_of":64}'
CUDNN='"module":{"speed":{"cudnn_attention":true}}'
TARGET16='"data":{"pad_to_multiple_of":64,"target_pad_to_multiple_of":16}'
(
  export CUDA_VISIBLE_DEVICES=0 TORCHINDUCTOR_CACHE_DIR=/tmp/inductor0
  python benchmarks/speed.py --shapes t5-large --tools hf lit-qsum --warmup 10 --steps 30 --what speed-t5-mb16-cudnn \
    --lit-variant "default={$PAD}" --lit-variant "cudnn-attention={$CUDNN,$PAD}" \
    --lit-variant "cudnn-target16={$CUDNN,$TARGET16}" \
    --worker-timeout 100 --deadline-s $(( $(left) - 10 )) --logs $W/logs --out $W/res > $W/gpu0-t5-mb16.log 2>&1
) &
P0=$!
(
  export CUDA_VISIBLE_DEVICES=1 TORCHINDUCTOR_CACHE_DIR=/tmp/inductor1
  python benchmarks/speed.py --shapes t5-large --tools hf lit-qsum --warmup 10 --steps 30 --micro-batch 64 \
    --what speed-t5-mb64-cudnn --lit-variant "default={$PAD}" --lit-variant "cudnn-attention={$CUDNN,$PAD}" \
    --worker-timeout 110 --deadline-s $(( $(left) - 10 )) --logs $W/logs --out $W/res > $W/gpu1-t5-mb64.log 2>&1
) &
P1=$!
wait $P0 $P1
finish
