#!/usr/bin/env bash
# Ran 2026-11-30 13:10 UTC as session 10's call 2 (417 s): records speed-{t5-mb16,t5-mb64,bart-mb64,bart-mb16}-bf16act (the t5 mb64 recipe run hit --worker-timeout); logs 2026-11-30-s10-call2-*; CUDA-graph GPU tests 6/6 passed
# Session 10, second device call (nvidia-h200-x2). Issue #16: the new defaults (bf16 activations for T5/BART, T5's
# tanh GELU as one kernel, cuDNN attention inside the CUDA graphs) against the recipe in the same run.
# GPU 0: t5-large mb16 (recipe / default), then bart-large mb64 (recipe / default / chunked seq2seq loss: peak
# allocated against the recipe's). GPU 1: the CUDA-graph GPU tests (captured vs eager gradients, fit with graphs vs
# without: under the new defaults), t5-large mb64 (recipe / default, kernel tables in prof1/), bart-large mb16.
# No Unsloth compile beside the host-bound recipe runs. Ends by ~545 s.
source benchmarks/calls/prelude.sh
PAD='"data":{"pad_to_multiple_of":64}'
CHUNK='"module":{"speed":{"chunked_seq2seq_loss":true}}'
PYT="python -m pytest -m gpu -v -rA --tb=short -p no:cacheprovider -o faulthandler_timeout=0 --durations=0"
(
  export CUDA_VISIBLE_DEVICES=0 TORCHINDUCTOR_CACHE_DIR=/tmp/inductor0
  python benchmarks/speed.py --shapes t5-large --tools hf lit-qsum --warmup 10 --steps 30 --what speed-t5-mb16-bf16act \
    --lit-variant "default={$PAD}" \
    --worker-timeout 140 --deadline-s $(( $(left) - 10 )) --logs $W/logs0 --out $W/res > $W/gpu0-t5-mb16.log 2>&1
  python benchmarks/speed.py --shapes bart-large --tools hf lit-qsum --warmup 10 --steps 30 --micro-batch 64 \
    --what speed-bart-mb64-bf16act --lit-variant "default={$PAD}" --lit-variant "chunked-loss={$CHUNK,$PAD}" \
    --worker-timeout 120 --deadline-s $(( $(left) - 10 )) --logs $W/logs0b --out $W/res > $W/gpu0-bart-mb64.log 2>&1
) &
P0=$!
(
  export CUDA_VISIBLE_DEVICES=1 TORCHINDUCTOR_CACHE_DIR=/tmp/inductor1
  T=tests/fastpath/test_cuda_graphs.py
  timeout -k 5 120 $PYT --timeout 100 "$T::test_a_captured_step_gives_the_eager_loss_and_gradients[False-False-False]" \
    "$T::test_a_captured_step_gives_the_eager_loss_and_gradients[True-False-False]" \
    "$T::test_a_captured_step_gives_the_eager_loss_and_gradients[True-False-True]" \
    "$T::test_a_failed_capture_leaves_eager_steps_with_dropout_working" \
    "$T::test_fit_with_graphs_matches_fit_without_on_a_gpu[False-False]" \
    "$T::test_fit_with_graphs_matches_fit_without_on_a_gpu[False-True]" \
    > $W/gpu1-tests.log 2>&1
  echo "rc=$?" >> $W/gpu1-tests.log
  LIT_QSUM_SPEED_PROFILE=$W/prof1 python benchmarks/speed.py --shapes t5-large --tools hf lit-qsum --warmup 10 \
    --steps 30 --micro-batch 64 --what speed-t5-mb64-bf16act --lit-variant "default={$PAD}" \
    --worker-timeout 150 --deadline-s $(( $(left) - 10 )) --logs $W/logs1 --out $W/res > $W/gpu1-t5-mb64.log 2>&1
  python benchmarks/speed.py --shapes bart-large --tools hf lit-qsum --warmup 10 --steps 30 \
    --what speed-bart-mb16-bf16act --lit-variant "default={$PAD}" \
    --worker-timeout 110 --deadline-s $(( $(left) - 10 )) --logs $W/logs1b --out $W/res > $W/gpu1-bart-mb16.log 2>&1
) &
P1=$!
wait $P0 $P1
finish
