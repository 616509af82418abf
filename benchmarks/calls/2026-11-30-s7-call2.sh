#!/usr/bin/env bash
# Session 7, call 2 (nvidia-h200-x2). In call 1 (2026-11-30-s7-call1.sh) pytest printed "...E.." for the CUDA-graph
# GPU tests, the third (the captured compiled step) a pass; this call measures what compiled blocks under graphs are
# worth and looks for the decoder's host time.
# GPU 0: t5-large at micro-batch 16 and 64: recipe, lit-qsum defaults, lit-qsum with compiled blocks under graphs
#        (LIT_QSUM_GRAPHS_OVER_COMPILE=1), kernel tables of each lit-qsum run. Writes only under /tmp, so the
#        tests on GPU 1 (whose guard fails any test that sees outputs/ change) see no writes in the checkout.
# GPU 1: the CUDA-graph GPU tests with a per-test limit, then the decoder: lit-qsum's Unsloth backend padded to 8
#        (no graphs there, so padding to 64 only adds pad tokens), the plain Unsloth loop, lit-qsum's defaults, with
#        kernel and host-time tables.
set -u
export PYTHONPATH=$PWD/.device-site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 LIT_QSUM_CACHE=/tmp/lq-cache \
  TOKENIZERS_PARALLELISM=false
W=/tmp/call; rm -rf $W; mkdir -p $W/logs $W/res $W/prof
( while sleep 15; do tar czf $OUT/.call.tgz -C $W . 2>/dev/null && mv $OUT/.call.tgz $OUT/call.tgz; done ) &
TARRER=$!
S=$(date +%s)
PAD='"data":{"pad_to_multiple_of":64}'
COMP='"module":{"speed":{"compile":true}}'
(
  export CUDA_VISIBLE_DEVICES=0 TORCHINDUCTOR_CACHE_DIR=/tmp/inductor-bench LIT_QSUM_GRAPHS_OVER_COMPILE=1 \
    LIT_QSUM_SPEED_PROFILE=$W/prof
  python benchmarks/speed.py --shapes t5-large --tools hf lit-qsum --steps 8 --what speed-compiled-graphs-mb16 \
    --lit-variant "compiled-graphs={$COMP,$PAD}" --lit-variant "default={$PAD}" \
    --worker-timeout 240 --deadline-s 330 --logs $W/logs --out $W/res > $W/gpu0-mb16.log 2>&1
  python benchmarks/speed.py --shapes t5-large --tools hf lit-qsum --steps 6 --micro-batch 64 \
    --what speed-compiled-graphs-mb64 --lit-variant "compiled-graphs={$COMP,$PAD}" --lit-variant "default={$PAD}" \
    --worker-timeout 150 --deadline-s $(( 540 - ($(date +%s) - S) )) --logs $W/logs --out $W/res \
    > $W/gpu0-mb64.log 2>&1
) &
(
  export CUDA_VISIBLE_DEVICES=1
  TORCHINDUCTOR_CACHE_DIR=/tmp/inductor-tests timeout -k 5 300 python -m pytest -m gpu \
    tests/fastpath/test_cuda_graphs.py -rA --tb=short -p no:cacheprovider -o faulthandler_timeout=0 --timeout 200 \
    --durations=0 > $W/gpu1-pytest.log 2>&1
  echo "pytest rc=$?" >> $W/gpu1-pytest.log
  LIT_QSUM_SPEED_PROFILE=$W/prof TORCHINDUCTOR_CACHE_DIR=/tmp/inductor-dec python benchmarks/speed.py \
    --shapes qwen2.5-1.5b --tools lit-qsum unsloth --steps 6 --what speed-decoder-pad8 \
    --lit-variant 'unsloth-backend-pad8={"module":{"backend":"unsloth"}}' --lit-variant "default={$PAD}" \
    --worker-timeout 150 --deadline-s $(( 540 - ($(date +%s) - S) )) --logs $W/logs --out $W/res \
    > $W/gpu1-decoder.log 2>&1
) &
wait -n; wait -n
kill $TARRER
tar czf $OUT/.call.tgz -C $W . && mv $OUT/.call.tgz $OUT/call.tgz
ls -la $OUT
