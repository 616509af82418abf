#!/usr/bin/env bash
# Ran 2026-11-30 13:18 UTC as session 10's call 3 (368 s): records speed-t5-mb64-final, speed-mb16-final, speed-decoder-final (the decoder without pad64 by mistake: 32 captures); logs 2026-11-30-s10-call3-*
# Session 10, third device call (nvidia-h200-x2). Issue #16: the final defaults (bf16 activations, tanh GELU kernel,
# cuDNN attention in graphs, chunked seq2seq loss) against the recipe in the same run, for every target shape:
# GPU 0: t5-large mb64 (the recipe timed out in call 2 beside other work: more time here), then the decoder
# (Qwen2.5-1.5B mb16: cuDNN attention in graphs is new for it). GPU 1: t5-large mb16, KoBART mb16, bart-large mb16.
# No Unsloth compile beside the host-bound recipe runs. Ends by ~470 s.
BUDGET=470
source benchmarks/calls/prelude.sh
PAD='"data":{"pad_to_multiple_of":64}'
(
  export CUDA_VISIBLE_DEVICES=0 TORCHINDUCTOR_CACHE_DIR=/tmp/inductor0
  LIT_QSUM_SPEED_PROFILE=$W/prof0 python benchmarks/speed.py --shapes t5-large --tools hf lit-qsum --warmup 10 \
    --steps 30 --micro-batch 64 --what speed-t5-mb64-final --lit-variant "default={$PAD}" \
    --worker-timeout 190 --deadline-s $(( $(left) - 10 )) --logs $W/logs0 --out $W/res > $W/gpu0-t5-mb64.log 2>&1
  python benchmarks/speed.py --shapes qwen2.5-1.5b --tools hf lit-qsum --warmup 10 --steps 30 \
    --what speed-decoder-final --lit-variant "default={}" \
    --worker-timeout 110 --deadline-s $(( $(left) - 10 )) --logs $W/logs0b --out $W/res > $W/gpu0-decoder.log 2>&1
) &
P0=$!
(
  export CUDA_VISIBLE_DEVICES=1 TORCHINDUCTOR_CACHE_DIR=/tmp/inductor1
  python benchmarks/speed.py --shapes t5-large kobart bart-large --tools hf lit-qsum --warmup 10 --steps 30 \
    --what speed-mb16-final --lit-variant "default={$PAD}" \
    --worker-timeout 140 --deadline-s $(( $(left) - 10 )) --logs $W/logs1 --out $W/res > $W/gpu1-mb16.log 2>&1
) &
P1=$!
wait $P0 $P1
finish
