#!/usr/bin/env bash
# Ran 2026-11-30 15:33 UTC as session 11 call 3 on nvidia-h200-x2 (534 s): record multi-gpu-s11 (ddp2 cut by its 60 s timeout); several-GPU tests 2/2 passed; logs ../results/logs/2026-11-30-s11-call3-*
# Session 11, two-GPU call (nvidia-h200-x2). Issue #14 in one call: DDP t5-large 1 vs 2 GPUs with today's defaults
# (the fastest landed settings: compile does not run under CUDA graphs), FSDP t5-xl with session 10's FSDP defaults
# (ZeRO-1 for the adapter, saved activations offloaded to pinned host memory) and without the offload, the one-GPU
# t5-xl peak in the same call; then the several-GPU tests over NCCL. Ends by ~570 s.
source benchmarks/calls/prelude.sh
export BUDGET=570
S_=--trainer.strategy.init_args
timeout -k 5 390 python benchmarks/multi_gpu.py --deadline-s 380 --what multi-gpu-s11 \
  --fsdp-variant "no-offload=$S_.offload_activations false" --out $W/res > $W/multi-gpu.log 2>&1
PYT="python -m pytest -m gpu -v -rA --tb=short -p no:cacheprovider -o faulthandler_timeout=0 --durations=0"
T=$(( $(left) - 15 ))
timeout -k 5 $T $PYT --timeout $(( T - 10 )) tests/distributed/test_multi_gpu_cuda.py > $W/multi-gpu-tests.log 2>&1
echo "rc=$?" >> $W/multi-gpu-tests.log
finish
