#!/usr/bin/env bash
# Prepared in session 10 for a next session's device call (nvidia-h200-x2), not yet run; see
# benchmarks/results/2026-11-30-speed-notes-7.md ("Next"). Issue #14: DDP's 2-GPU/1-GPU scaling again with session
# 10's defaults (bf16 activations, chunked seq2seq loss, cuDNN attention in graphs; 1.92x with session 9's), then the
# several-GPU tests (their FSDP test now runs ZeRO-1 and the activation offload over NCCL). Ends by ~545 s.
source benchmarks/calls/prelude.sh
timeout -k 5 330 python benchmarks/multi_gpu.py --skip fsdp2 single-xl --deadline-s 320 --what multi-gpu-ddp \
  --out $W/res > $W/multi-gpu.log 2>&1
PYT="python -m pytest -m gpu -v -rA --tb=short -p no:cacheprovider -o faulthandler_timeout=0 --durations=0"
T=$(( $(left) - 15 ))
timeout -k 5 $T $PYT --timeout $(( T - 10 )) tests/distributed/test_multi_gpu_cuda.py > $W/multi-gpu-tests.log 2>&1
echo "rc=$?" >> $W/multi-gpu-tests.log
finish
