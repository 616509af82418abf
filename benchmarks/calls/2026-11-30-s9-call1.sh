#!/usr/bin/env bash
# Run in session 9 (2026-11-30) as call 1; records benchmarks/results/2026-11-30-speed-{decoder-3,unsloth-backend-2,t5-mb16-candidates,steady-t5-mb64-2,steady-bart-mb64}.*, logs benchmarks/results/logs/2026-11-30-s9-call1-* (both GPUs wrote t5-large per-run logs of one name: the last one kept is the micro-batch-64 run's).
# Prepared at the end of session 8 for the next session's first device call (nvidia-h200-x2), not yet run; see
# benchmarks/results/2026-11-30-speed-notes-5.md ("Next"). Every figure now has its steady-state twin (timed steps
# without a CUDA-graph capture), and the sync-free optimizer step really runs under bf16-mixed. Ends by ~545 s.
# GPU 0: the decoder row (recipe, QLoRA defaults), then the Unsloth backend against the plain Unsloth loop (both padded
#        to 8, kernel + host tables), then t5-large mb16 default / no adapter copies / cuDNN attention / summaries
#        padded to 16 (lit-qsum only: the choice between them is GPU time per token and steady tokens/s; the recipe's
#        figure is in call 3 of session 8). "fit with graphs = fit without" on GPU 1 checks the adapter copies' refresh.
# GPU 1: the CUDA-graph, norm and sync GPU tests; t5-large mb64 (recipe, defaults); bart-large mb64 (recipe, defaults).
source benchmarks/calls/prelude.sh
PAD='"data":{"pad_to_multiple_of":64}'
CUDNN='"module":{"speed":{"cudnn_attention":true}}'
TARGET16='"data":{"pad_to_multiple_of":64,"target_pad_to_multiple_of":16}'
NOCOPIES='"module":{"speed":{"adapter_copies":false}}'
(
  export CUDA_VISIBLE_DEVICES=0 TORCHINDUCTOR_CACHE_DIR=/tmp/inductor0
  python benchmarks/speed.py --shapes qwen2.5-1.5b --tools hf lit-qsum --warmup 10 --steps 30 --what speed-decoder-3 \
    --lit-variant "default={$PAD}" --worker-timeout 110 --deadline-s 150 --logs $W/logs --out $W/res \
    > $W/gpu0-decoder.log 2>&1
  LIT_QSUM_SPEED_PROFILE=$W/prof python benchmarks/speed.py --shapes qwen2.5-1.5b --tools lit-qsum unsloth --warmup 10 \
    --steps 30 --what speed-unsloth-backend-2 --lit-variant 'unsloth-backend-pad8={"module":{"backend":"unsloth"}}' \
    --worker-timeout 100 --deadline-s 130 --logs $W/logs --out $W/res > $W/gpu0-unsloth.log 2>&1
  python benchmarks/speed.py --shapes t5-large --tools lit-qsum --warmup 10 --steps 30 --what speed-t5-mb16-candidates \
    --lit-variant "default={$PAD}" --lit-variant "no-adapter-copies={$NOCOPIES,$PAD}" \
    --lit-variant "cudnn-attention={$CUDNN,$PAD}" --lit-variant "target16={$TARGET16}" \
    --worker-timeout 70 --deadline-s $(( $(left) - 10 )) --logs $W/logs --out $W/res > $W/gpu0-t5-candidates.log 2>&1
) &
P0=$!
(
  export CUDA_VISIBLE_DEVICES=1 TORCHINDUCTOR_CACHE_DIR=/tmp/inductor1
  timeout -k 5 90 python -m pytest -m gpu -v -rA --tb=short -p no:cacheprovider -o faulthandler_timeout=0 \
    --timeout 60 tests/fastpath/test_cuda_graphs.py tests/fastpath/test_norms.py tests/fastpath/test_step_syncs.py \
    -k "not compiled and not True-True and not True]" > $W/gpu1-tests.log 2>&1; echo "rc=$?" >> $W/gpu1-tests.log
  python benchmarks/speed.py --shapes t5-large --tools hf lit-qsum --warmup 10 --steps 30 --micro-batch 64 \
    --what speed-steady-t5-mb64-2 --lit-variant "default={$PAD}" \
    --worker-timeout 130 --deadline-s 200 --logs $W/logs --out $W/res > $W/gpu1-t5-mb64.log 2>&1
  python benchmarks/speed.py --shapes bart-large --tools hf lit-qsum --warmup 10 --steps 30 --micro-batch 64 \
    --what speed-steady-bart-mb64 --lit-variant "default={$PAD}" \
    --worker-timeout 100 --deadline-s $(( $(left) - 10 )) --logs $W/logs --out $W/res > $W/gpu1-bart-mb64.log 2>&1
) &
P1=$!
wait $P0 $P1
finish
