#!/usr/bin/env bash
# Run in session 9 as call 3 (377 s) with speed.cudnn_attention_in_graphs on by default and the eager warm-up without cuDNN: the first capture with cuDNN failed ("operation failed due to a previous error during capture") and fell back; the eager micro-batches now use it too and the setting is off by default until timed. Records benchmarks/results/2026-11-30-speed-{t5-mb16-s9,unsloth-backend-3}.*, logs benchmarks/results/logs/2026-11-30-s9-call3-*.
# Session 9, call 3 (nvidia-h200-x2), ~600 s of device time left: cuDNN attention inside captured steps only (the new
# default, speed.cudnn_attention_in_graphs) checked and timed, the Unsloth backend timed, then the several-GPU tests.
# GPU 0: the CUDA-graph GPU tests (a capture with cuDNN attention against an eager step with it; fit with graphs =
#        fit without), then t5-large mb16 recipe / defaults.
# GPU 1: the Unsloth backend against the plain Unsloth loop, both padded to 8 (call 1's run was cut at 100 s).
# Both: tests/distributed/test_multi_gpu_cuda.py with what is left.
BUDGET=490
source benchmarks/calls/prelude.sh
T=tests/fastpath/test_cuda_graphs.py
PYT="python -m pytest -m gpu -v -rA --tb=short -p no:cacheprovider -o faulthandler_timeout=0 --durations=0"
(
  export CUDA_VISIBLE_DEVICES=0 TORCHINDUCTOR_CACHE_DIR=/tmp/inductor0
  timeout -k 5 80 $PYT --timeout 70 "$T::test_a_captured_step_gives_the_eager_loss_and_gradients[True-False-True]" \
    "$T::test_a_captured_step_gives_the_eager_loss_and_gradients[True-False-False]" \
    "$T::test_fit_with_graphs_matches_fit_without_on_a_gpu[False]" > $W/gpu0-graphs-tests.log 2>&1
  echo "rc=$?" >> $W/gpu0-graphs-tests.log
  python benchmarks/speed.py --shapes t5-large --tools hf lit-qsum --warmup 10 --steps 30 --what speed-t5-mb16-s9 \
    --lit-variant 'default={"data":{"pad_to_multiple_of":64}}' \
    --worker-timeout 140 --deadline-s 230 --logs $W/logs --out $W/res > $W/gpu0-t5-mb16.log 2>&1
) &
P0=$!
(
  export CUDA_VISIBLE_DEVICES=1 TORCHINDUCTOR_CACHE_DIR=/tmp/inductor1
  LIT_QSUM_SPEED_PROFILE=$W/prof python benchmarks/speed.py --shapes qwen2.5-1.5b --tools lit-qsum unsloth --warmup 10 \
    --steps 30 --what speed-unsloth-backend-3 --lit-variant 'unsloth-backend-pad8={"module":{"backend":"unsloth"}}' \
    --worker-timeout 170 --deadline-s 300 --logs $W/logs --out $W/res > $W/gpu1-unsloth.log 2>&1
) &
P1=$!
wait $P0 $P1
L=$(left)
if [ "$L" -gt 60 ]; then
  timeout -k 5 $(( L - 10 )) $PYT --timeout $(( L - 20 )) tests/distributed/test_multi_gpu_cuda.py \
    > $W/multi-gpu-tests.log 2>&1
  echo "rc=$?" >> $W/multi-gpu-tests.log
fi
finish
