#!/usr/bin/env bash
# Ran 2026-11-30 13:25 UTC as session 10's call 4 (351 s): record multi-gpu-s10; logs 2026-11-30-s10-call4-*; several-GPU tests 2/2 passed
# Session 10, fourth device call (nvidia-h200-x2). Issue #14: the one-GPU t5-xl training peak measured again
# (session 8's was lost to the memory snapshot's reset), beside FSDP t5-xl on both GPUs with the root's early reshard
# and no adapter copies, under the session's new defaults (bf16 activations, chunked seq2seq loss off under FSDP);
# then the several-GPU tests. Ends by ~400 s.
export BUDGET=400
source benchmarks/calls/prelude.sh
timeout -k 5 200 python benchmarks/multi_gpu.py --skip ddp1 ddp2 --deadline-s 190 --out $W/res > $W/multi-gpu.log 2>&1
PYT="python -m pytest -m gpu -v -rA --tb=short -p no:cacheprovider -o faulthandler_timeout=0 --durations=0"
T=$(( $(left) - 15 ))
timeout -k 5 $T $PYT --timeout $(( T - 10 )) tests/distributed/test_multi_gpu_cuda.py > $W/multi-gpu-tests.log 2>&1
echo "rc=$?" >> $W/multi-gpu-tests.log
finish
