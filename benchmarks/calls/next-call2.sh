#!/usr/bin/env bash
# Prepared at the end of session 8 (nvidia-h200-x2), not yet run: issue #14. benchmarks/multi_gpu.py's four runs with
# today's defaults (DDP t5-large on 1 and 2 GPUs; FSDP t5-xl on 2 with each frozen block resharded after its own
# backward, against 3.46 GiB per GPU before; the one-GPU t5-xl QLoRA peak, 2.83 GiB in session 8), then the
# several-GPU tests (the DDP OOM test's fake OOM now fires from step 0), then the captured compiled step alone with
# what is left. No memory history: it broke the FSDP run in session 8's call 4. Ends by ~545 s.
source benchmarks/calls/prelude.sh
timeout -k 5 260 python benchmarks/multi_gpu.py --deadline-s 250 --out $W/res > $W/multi-gpu.log 2>&1
PYT="python -m pytest -m gpu -v -rA --tb=short -p no:cacheprovider -o faulthandler_timeout=0 --durations=0"
timeout -k 5 170 $PYT --timeout 160 tests/distributed/test_multi_gpu_cuda.py > $W/multi-gpu-tests.log 2>&1
echo "rc=$?" >> $W/multi-gpu-tests.log
CUDA_VISIBLE_DEVICES=0 TORCHINDUCTOR_CACHE_DIR=/tmp/ind2 timeout -k 5 $(( $(left) - 5 )) $PYT \
  --timeout $(( $(left) - 15 )) \
  "tests/fastpath/test_cuda_graphs.py::test_a_captured_step_gives_the_eager_loss_and_gradients[True-True]" \
  > $W/compiled-capture-test.log 2>&1
echo "rc=$?" >> $W/compiled-capture-test.log
finish
