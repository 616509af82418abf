#!/usr/bin/env bash
# Session 8, call 2 (nvidia-h200-x2). Call 1 showed the GPU busy 89-95% (the host's waits are gone) but lit-qsum's
# timed windows holding 6-10 CUDA-graph captures of new batch shapes (0.6-0.7 s each): the harness now also reports
# steady-state tokens/s (timed steps without a capture, by CUDA events) beside the window's. One-pass norms are now on.
# GPU 0: the sync test with each sync's stack (~25 s); t5-large mb16 (hf, default, ungrouped); bart-large mb16.
# GPU 1: the one-GPU t5-xl QLoRA memory snapshot (#14's reference); t5-large mb64 (hf, default, ungrouped); KoBART mb16.
source benchmarks/calls/prelude.sh
PAD='"data":{"pad_to_multiple_of":64}'
UNGROUPED='"data":{"pad_to_multiple_of":64,"group_by_target":false}'
(
  export CUDA_VISIBLE_DEVICES=0 TORCHINDUCTOR_CACHE_DIR=/tmp/inductor0
  timeout -k 5 60 python -m pytest -m gpu -v -rA --tb=short -p no:cacheprovider -o faulthandler_timeout=0 \
    --timeout 50 tests/fastpath/test_step_syncs.py > $W/gpu0-sync-test.log 2>&1; echo "rc=$?" >> $W/gpu0-sync-test.log
  python benchmarks/speed.py --shapes t5-large --tools hf lit-qsum --warmup 10 --steps 30 --what speed-steady-t5-mb16 \
    --lit-variant "default={$PAD}" --lit-variant "ungrouped={$UNGROUPED}" \
    --worker-timeout 120 --deadline-s 270 --logs $W/logs --out $W/res > $W/gpu0-t5.log 2>&1
  python benchmarks/speed.py --shapes bart-large --tools hf lit-qsum --warmup 10 --steps 30 \
    --what speed-steady-bart-mb16 --lit-variant "default={$PAD}" \
    --worker-timeout 110 --deadline-s $(( $(left) - 10 )) --logs $W/logs --out $W/res > $W/gpu0-bart.log 2>&1
) &
P0=$!
(
  export CUDA_VISIBLE_DEVICES=1 TORCHINDUCTOR_CACHE_DIR=/tmp/inductor1
  timeout -k 5 135 python benchmarks/multi_gpu.py --skip ddp1 ddp2 fsdp2 --snapshot-step 4 --deadline-s 125 \
    --out $W/res > $W/gpu1-single-xl-memory.log 2>&1
  python benchmarks/speed.py --shapes t5-large --tools hf lit-qsum --warmup 10 --steps 30 --micro-batch 64 \
    --what speed-steady-t5-mb64 --lit-variant "default={$PAD}" --lit-variant "ungrouped={$UNGROUPED}" \
    --worker-timeout 130 --deadline-s 290 --logs $W/logs --out $W/res > $W/gpu1-t5-mb64.log 2>&1
  python benchmarks/speed.py --shapes kobart --tools hf lit-qsum --warmup 10 --steps 30 \
    --what speed-steady-kobart-mb16 --lit-variant "default={$PAD}" \
    --worker-timeout 70 --deadline-s $(( $(left) - 10 )) --logs $W/logs --out $W/res > $W/gpu1-kobart.log 2>&1
) &
P1=$!
wait $P0 $P1
finish
