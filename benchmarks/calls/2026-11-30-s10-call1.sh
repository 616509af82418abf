#!/usr/bin/env bash
# Ran 2026-11-30 13:00 UTC as session 10's call 1 (340 s): records speed-t5-mb16-cig, speed-t5-mb64-cig; logs benchmarks/results/logs/2026-11-30-s10-call1-*; cuDNN-in-graphs GPU tests 3/3 passed
# Prepared at the end of session 9 for the next session's first device call (nvidia-h200-x2), not yet run; see
# benchmarks/results/2026-11-30-speed-notes-6.md ("Next"). Issue #16: cuDNN attention inside the training steps only
# (speed.cudnn_attention_in_graphs, opt-in) checked by its GPU tests and timed against the defaults and the recipe.
# Each GPU writes its own per-run logs folder (session 9's calls shared one and lost some logs).
# GPU 0: t5-large mb16: recipe / default / cudnn-in-graphs. GPU 1: the GPU tests of cudnn-in-graphs, then t5-large
# mb64: recipe / default / cudnn-in-graphs with kernel tables (prof1/: where the GPU time per token goes). Neither GPU runs an Unsloth compile meanwhile (it slowed the host-bound
# recipe in session 9's call 3). Ends by ~545 s.
source benchmarks/calls/prelude.sh
PAD='"data":{"pad_to_multiple_of":64}'
CIG='"module":{"speed":{"cudnn_attention_in_graphs":true}}'
T=tests/fastpath/test_cuda_graphs.py
PYT="python -m pytest -m gpu -v -rA --tb=short -p no:cacheprovider -o faulthandler_timeout=0 --durations=0"
(
  export CUDA_VISIBLE_DEVICES=0 TORCHINDUCTOR_CACHE_DIR=/tmp/inductor0
  python benchmarks/speed.py --shapes t5-large --tools hf lit-qsum --warmup 10 --steps 30 --what speed-t5-mb16-cig \
    --lit-variant "default={$PAD}" --lit-variant "cudnn-in-graphs={$CIG,$PAD}" \
    --worker-timeout 140 --deadline-s $(( $(left) - 10 )) --logs $W/logs0 --out $W/res > $W/gpu0-t5-mb16.log 2>&1
) &
P0=$!
(
  export CUDA_VISIBLE_DEVICES=1 TORCHINDUCTOR_CACHE_DIR=/tmp/inductor1
  timeout -k 5 100 $PYT --timeout 90 "$T::test_fit_with_graphs_matches_fit_without_on_a_gpu[False-True]" \
    "$T::test_a_captured_step_gives_the_eager_loss_and_gradients[True-False-True]" \
    "$T::test_fit_with_graphs_matches_fit_without_on_a_gpu[False-False]" > $W/gpu1-tests.log 2>&1
  echo "rc=$?" >> $W/gpu1-tests.log
  LIT_QSUM_SPEED_PROFILE=$W/prof1 python benchmarks/speed.py --shapes t5-large --tools hf lit-qsum --warmup 10 \
    --steps 30 --micro-batch 64 \
    --what speed-t5-mb64-cig --lit-variant "default={$PAD}" --lit-variant "cudnn-in-graphs={$CIG,$PAD}" \
    --worker-timeout 140 --deadline-s $(( $(left) - 10 )) --logs $W/logs1 --out $W/res > $W/gpu1-t5-mb64.log 2>&1
) &
P1=$!
wait $P0 $P1
finish
