#!/usr/bin/env bash
# Ran in session 12 as call 3 (nvidia-h200-x2, 476 s): both tests passed; records 2026-11-30-multi-gpu-fsdp-load-s12 and 2026-11-30-multi-gpu-ddp-s12
# Session 12, call 3 (nvidia-h200-x2). load_on_cpu now quantizes each weight on the rank's GPU and keeps it on the host
# (call 2: quantizing on the CPU gave a different 4-bit base and took ~57 s for t5-xl). The two GPU tests of that path;
# then FSDP (default), one GPU and FSDP with load_on_cpu in one run (three peaks each, load cost in wall_s); then DDP
# t5-large 1 vs 2 GPUs again with what is left (call 1's one-GPU run was 20% slower than session 11's). Ends by ~570 s.
source benchmarks/calls/prelude.sh
export BUDGET=570
PYT="python -m pytest -m gpu -v -rA --tb=short -p no:cacheprovider -o faulthandler_timeout=0 --durations=0"
timeout -k 5 140 $PYT --timeout 130 -k host tests/distributed/test_load_on_cpu_cuda.py \
  tests/distributed/test_multi_gpu_cuda.py > $W/gpu-tests.log 2>&1
echo "rc=$?" >> $W/gpu-tests.log
S_=--trainer.strategy.init_args
timeout -k 5 300 python benchmarks/multi_gpu.py --deadline-s 290 --what multi-gpu-fsdp-load-s12 --skip ddp1 ddp2 \
  --fsdp-variant "cpu-load=$S_.load_on_cpu true" --out $W/res > $W/multi-gpu-fsdp.log 2>&1
D=$(( $(left) - 15 ))
timeout -k 5 $(( D + 10 )) python benchmarks/multi_gpu.py --deadline-s $D --what multi-gpu-ddp-s12 \
  --skip fsdp2 single-xl --out $W/res > $W/multi-gpu-ddp.log 2>&1
finish
