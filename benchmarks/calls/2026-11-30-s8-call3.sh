#!/usr/bin/env bash
# Session 8, call 3 (nvidia-h200-x2). Call 2's sync test named the waits: the sync-free optimizer step never ran under
# bf16-mixed ("16-mixed" in "bf16-mixed" was true), so every step still read the agreement flags. Fixed; this call
# times the defaults again with the step really sync-free.
# Phase A, ~260 s. GPU 0: the sync test; t5-large mb16 (hf, default); bart-large mb16 (hf, default).
#                  GPU 1: KoBART mb16 (hf, default); t5-large mb64 (hf, default) with kernel + host tables.
# Phase B, both GPUs: FSDP t5-xl with optimizer step 4's memory snapshot (#14), then the several-GPU tests.
source benchmarks/calls/prelude.sh
PAD='"data":{"pad_to_multiple_of":64}'
(
  export CUDA_VISIBLE_DEVICES=0 TORCHINDUCTOR_CACHE_DIR=/tmp/inductor0
  timeout -k 5 60 python -m pytest -m gpu -v -rA --tb=short -p no:cacheprovider -o faulthandler_timeout=0 \
    --timeout 50 tests/fastpath/test_step_syncs.py > $W/gpu0-sync-test.log 2>&1; echo "rc=$?" >> $W/gpu0-sync-test.log
  python benchmarks/speed.py --shapes t5-large --tools hf lit-qsum --warmup 10 --steps 30 --what speed-syncfree-t5-mb16 \
    --lit-variant "default={$PAD}" --worker-timeout 110 --deadline-s 150 --logs $W/logs --out $W/res > $W/gpu0-t5.log 2>&1
  python benchmarks/speed.py --shapes bart-large --tools hf lit-qsum --warmup 10 --steps 30 \
    --what speed-syncfree-bart-mb16 --lit-variant "default={$PAD}" \
    --worker-timeout 80 --deadline-s 110 --logs $W/logs --out $W/res > $W/gpu0-bart.log 2>&1
) &
P0=$!
(
  export CUDA_VISIBLE_DEVICES=1 TORCHINDUCTOR_CACHE_DIR=/tmp/inductor1
  python benchmarks/speed.py --shapes kobart --tools hf lit-qsum --warmup 10 --steps 30 \
    --what speed-syncfree-kobart-mb16 --lit-variant "default={$PAD}" \
    --worker-timeout 70 --deadline-s 90 --logs $W/logs --out $W/res > $W/gpu1-kobart.log 2>&1
  LIT_QSUM_SPEED_PROFILE=$W/prof python benchmarks/speed.py --shapes t5-large --tools hf lit-qsum --warmup 10 \
    --steps 30 --micro-batch 64 --what speed-syncfree-t5-mb64 --lit-variant "default={$PAD}" \
    --worker-timeout 130 --deadline-s 195 --logs $W/logs --out $W/res > $W/gpu1-t5-mb64.log 2>&1
) &
P1=$!
wait $P0 $P1
echo "phase B at $(left) s left" > $W/phases.log
timeout -k 5 100 python benchmarks/multi_gpu.py --skip ddp1 ddp2 single-xl --snapshot-step 4 --deadline-s 90 \
  --out $W/res > $W/fsdp-memory.log 2>&1
echo "tests at $(left) s left" >> $W/phases.log
timeout -k 5 $(( $(left) - 5 )) python -m pytest -m gpu -v -rA --tb=short -p no:cacheprovider -o faulthandler_timeout=0 \
  --durations=0 --timeout $(( $(left) - 15 )) tests/distributed/test_multi_gpu_cuda.py > $W/multi-gpu-tests.log 2>&1
echo "rc=$?" >> $W/multi-gpu-tests.log
finish
