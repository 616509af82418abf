#!/usr/bin/env bash
# Prepared at the end of session 7 for the first device call of the next session (nvidia-h200-x2), not yet run; see
# benchmarks/results/2026-11-30-speed-notes-4.md ("Next"). Ends by ~560 s; logs re-tarred into $OUT every 15 s.
# Everything writes under /tmp, so tests on one GPU never see a benchmark write the checkout's outputs/.
# GPU 0: cuDNN attention under graphs (its per-shape planning is host time that a replay skips; its sm90 kernels
#        may beat the sm80 memory-efficient kernel lit-qsum uses now): t5-large mb16 recipe/default/cudnn, then the
#        decoder default/cudnn.
# GPU 1: the CUDA-graph GPU tests (non-compiled; then the compiled capture alone, which now compiles once), then the
#        Unsloth backend against the plain loop with both padded to 8, kernel + host tables for each.
set -u
export PYTHONPATH=$PWD/.device-site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 LIT_QSUM_CACHE=/tmp/lq-cache \
  TOKENIZERS_PARALLELISM=false
W=/tmp/call; rm -rf $W; mkdir -p $W/logs $W/res $W/prof
( while sleep 15; do tar czf $OUT/.call.tgz -C $W . 2>/dev/null && mv $OUT/.call.tgz $OUT/call.tgz; done ) &
TARRER=$!
S=$(date +%s)
PAD='"data":{"pad_to_multiple_of":64}'
CUDNN='"module":{"speed":{"cudnn_attention":true}}'
(
  export CUDA_VISIBLE_DEVICES=0 TORCHINDUCTOR_CACHE_DIR=/tmp/inductor-bench
  python benchmarks/speed.py --shapes t5-large --tools hf lit-qsum --steps 8 --what speed-cudnn-t5 \
    --lit-variant "default={$PAD}" --lit-variant "cudnn-attention={$CUDNN,$PAD}" \
    --worker-timeout 150 --deadline-s 300 --logs $W/logs --out $W/res > $W/gpu0-t5.log 2>&1
  python benchmarks/speed.py --shapes qwen2.5-1.5b --tools lit-qsum --steps 6 --what speed-cudnn-decoder \
    --lit-variant "default={$PAD}" --lit-variant "cudnn-attention={$CUDNN,$PAD}" \
    --worker-timeout 120 --deadline-s $(( 545 - ($(date +%s) - S) )) --logs $W/logs --out $W/res \
    > $W/gpu0-decoder.log 2>&1
) &
P0=$!
(
  export CUDA_VISIBLE_DEVICES=1
  T=tests/fastpath/test_cuda_graphs.py
  PYT="python -m pytest -m gpu -v -rA --tb=short -p no:cacheprovider -o faulthandler_timeout=0"
  TORCHINDUCTOR_CACHE_DIR=/tmp/ind1 timeout -k 5 100 $PYT --timeout 80 $T -k "not compiled and not True-True and not True]" \
    > $W/gpu1-graphs-tests.log 2>&1; echo "rc=$?" >> $W/gpu1-graphs-tests.log
  TORCHINDUCTOR_CACHE_DIR=/tmp/ind2 timeout -k 5 250 $PYT --timeout 240 \
    "$T::test_a_captured_step_gives_the_eager_loss_and_gradients[True-True]" > $W/gpu1-compiled-test.log 2>&1
  echo "rc=$?" >> $W/gpu1-compiled-test.log
  LIT_QSUM_SPEED_PROFILE=$W/prof TORCHINDUCTOR_CACHE_DIR=/tmp/inductor-dec python benchmarks/speed.py \
    --shapes qwen2.5-1.5b --tools unsloth lit-qsum --steps 6 --what speed-unsloth-backend-pad8 \
    --lit-variant 'unsloth-backend-pad8={"module":{"backend":"unsloth"}}' \
    --worker-timeout 120 --deadline-s $(( 545 - ($(date +%s) - S) )) --logs $W/logs --out $W/res \
    > $W/gpu1-unsloth.log 2>&1
) &
P1=$!
wait $P0 $P1
kill $TARRER
tar czf $OUT/.call.tgz -C $W . && mv $OUT/.call.tgz $OUT/call.tgz
ls -la $OUT
