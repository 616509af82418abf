#!/usr/bin/env bash
# Prepared in session 11 for a next session's device call (nvidia-h200-x2), not yet run; see
# benchmarks/results/2026-11-30-speed-notes-8.md ("Next"). The GPU tests of the FSDP loading path (session 11, not yet
# run on GPUs): a base quantized on the host and moved equals one quantized on the GPU (one GPU, seconds), and FSDP
# with load_on_cpu trains bitwise as FSDP loading on the GPUs; with the other several-GPU tests (DDP OOM recovery, FSDP
# fit/validate/checkpoint/resume). Ends by ~450 s.
source benchmarks/calls/prelude.sh
export BUDGET=450
PYT="python -m pytest -m gpu -v -rA --tb=short -p no:cacheprovider -o faulthandler_timeout=0 --durations=0"
T=$(( $(left) - 15 ))
timeout -k 5 $T $PYT --timeout $(( T - 10 )) tests/distributed/test_load_on_cpu_cuda.py \
  tests/distributed/test_multi_gpu_cuda.py > $W/gpu-tests.log 2>&1
echo "rc=$?" >> $W/gpu-tests.log
finish
