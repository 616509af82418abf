#!/usr/bin/env bash
# Ran in session 12 as call 2 (nvidia-h200-x2, 445 s): the two load_on_cpu GPU tests FAILED (host-quantized base differs from the GPU one), the other two passed; record 2026-11-30-multi-gpu-cpu-load-s12
# Session 12, call 2 (nvidia-h200-x2). The GPU tests of the FSDP loading path (session 11, not yet run on GPUs): a base
# quantized on the host and moved equals one quantized on the GPU, and FSDP with load_on_cpu trains as FSDP loading on
# the GPUs; with the other several-GPU tests (DDP OOM recovery, FSDP fit/validate/checkpoint/resume). Then the FSDP
# load_on_cpu benchmark run alone, with the whole 200 s run timeout (call 1 cut it at 120 s while it was still
# wrapping, after ~57 s of quantizing on the host). Ends by ~570 s.
source benchmarks/calls/prelude.sh
export BUDGET=570
PYT="python -m pytest -m gpu -v -rA --tb=short -p no:cacheprovider -o faulthandler_timeout=0 --durations=0"
timeout -k 5 300 $PYT --timeout 290 tests/distributed/test_load_on_cpu_cuda.py \
  tests/distributed/test_multi_gpu_cuda.py > $W/gpu-tests.log 2>&1
echo "rc=$?" >> $W/gpu-tests.log
S_=--trainer.strategy.init_args
D=$(( $(left) - 15 ))
timeout -k 5 $(( D + 10 )) python benchmarks/multi_gpu.py --deadline-s $D --what multi-gpu-cpu-load-s12 \
  --skip ddp1 ddp2 fsdp2 single-xl --fsdp-variant "cpu-load=$S_.load_on_cpu true" --out $W/res > $W/multi-gpu.log 2>&1
finish
