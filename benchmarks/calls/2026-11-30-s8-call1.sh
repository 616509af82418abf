#!/usr/bin/env bash
# (Ran as session 8 call 1, unchanged from how session 7 prepared it.)
# Prepared at the end of session 7 for the first device call of the next session (nvidia-h200-x2), not yet run; see
# benchmarks/results/2026-11-30-speed-notes-4.md ("Next"). Ends by ~560 s; logs re-tarred into $OUT every 15 s.
# Everything writes under /tmp, so the tests on GPU 1 never see a benchmark write the checkout's outputs/.
# 30 timed steps (not 6-8): the two-part length grouping (--data.group_by_target, on) needs an epoch of more than a
# handful of batches to group targets, as users' epochs are; "ungrouped" is the grouping of session 7 and before.
# GPU 0: t5-large mb16: recipe, defaults, ungrouped, one-pass RMS norms (speed.one_pass_rms_norm), cuDNN attention (a
#        replay skips its per-shape planning; its sm90 kernels may beat the sm80 memory-efficient one), summaries padded
#        to 16 (--data.target_pad_to_multiple_of: less padding, more shapes to capture),
#        then the decoder row in one call: recipe, lit-qsum's QLoRA defaults (now with the loss over the target rows
#        only) and with one-pass norms. Defaults now include the sync-free step and the addcmul_ LoRA backward.
# GPU 1: the non-compiled CUDA-graph tests, the one-pass norm's dtype test and the at-most-one-sync-per-step test
#        (~40 s), then t5-large mb64: recipe,
#        defaults, ungrouped; then lit-qsum's Unsloth backend against the plain Unsloth loop, both padded to 8, with
#        kernel + host tables (no compile runs beside it this time: it shares the host's CPUs).
source benchmarks/calls/prelude.sh
PAD='"data":{"pad_to_multiple_of":64}'
UNGROUPED='"data":{"pad_to_multiple_of":64,"group_by_target":false}'
CUDNN='"module":{"speed":{"cudnn_attention":true}}'
ONEPASS='"module":{"speed":{"one_pass_rms_norm":true}}'
TARGET16='"data":{"pad_to_multiple_of":64,"target_pad_to_multiple_of":16}'
(
  export CUDA_VISIBLE_DEVICES=0 TORCHINDUCTOR_CACHE_DIR=/tmp/inductor0
  python benchmarks/speed.py --shapes t5-large --tools hf lit-qsum --warmup 10 --steps 30 --what speed-grouped-t5-mb16 \
    --lit-variant "default={$PAD}" --lit-variant "ungrouped={$UNGROUPED}" --lit-variant "one-pass-norms={$ONEPASS,$PAD}" \
    --lit-variant "cudnn-attention={$CUDNN,$PAD}" --lit-variant "target16={$TARGET16}" \
    --worker-timeout 150 --deadline-s 420 --logs $W/logs --out $W/res \
    > $W/gpu0-t5.log 2>&1
  LIT_QSUM_SPEED_PROFILE=$W/prof python benchmarks/speed.py --shapes qwen2.5-1.5b --tools hf lit-qsum --steps 6 \
    --what speed-decoder-2 --lit-variant "default={$PAD}" --lit-variant "one-pass-norms={$ONEPASS,$PAD}" \
    --worker-timeout 100 --deadline-s $(left) --logs $W/logs --out $W/res > $W/gpu0-decoder.log 2>&1
) &
P0=$!
(
  export CUDA_VISIBLE_DEVICES=1 TORCHINDUCTOR_CACHE_DIR=/tmp/inductor1
  timeout -k 5 100 python -m pytest -m gpu -v -rA --tb=short -p no:cacheprovider -o faulthandler_timeout=0 \
    --timeout 80 tests/fastpath/test_cuda_graphs.py tests/fastpath/test_norms.py tests/fastpath/test_step_syncs.py \
    -k "not compiled and not True-True and not True]" \
    > $W/gpu1-graphs-tests.log 2>&1; echo "rc=$?" >> $W/gpu1-graphs-tests.log
  python benchmarks/speed.py --shapes t5-large --tools hf lit-qsum --warmup 10 --steps 30 --micro-batch 64 \
    --what speed-grouped-t5-mb64 --lit-variant "default={$PAD}" --lit-variant "ungrouped={$UNGROUPED}" \
    --worker-timeout 200 --deadline-s 400 --logs $W/logs --out $W/res > $W/gpu1-t5-mb64.log 2>&1
  LIT_QSUM_SPEED_PROFILE=$W/prof python benchmarks/speed.py --shapes qwen2.5-1.5b --tools lit-qsum unsloth --steps 6 \
    --what speed-unsloth-backend --lit-variant 'unsloth-backend-pad8={"module":{"backend":"unsloth"}}' \
    --worker-timeout 120 --deadline-s $(left) --logs $W/logs --out $W/res > $W/gpu1-unsloth.log 2>&1
) &
P1=$!
wait $P0 $P1
finish
