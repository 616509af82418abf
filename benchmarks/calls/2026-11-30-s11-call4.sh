#!/usr/bin/env bash
# Ran 2026-11-30 15:43 UTC as session 11 call 4 on nvidia-h200-x2 (136 s): record multi-gpu-fsdp-peak-s11; log ../results/logs/2026-11-30-s11-call4-multi-gpu.log
# Session 11, last two-GPU call (nvidia-h200-x2, ~250 s of device time left). Issue #14: call x2 found the FSDP peak
# unchanged by ZeRO-1 and the activation offload (2.36 GiB with and without the offload, as in session 10): the
# harness's peak counter was never reset after the sanity check's validation (loss + generate()) that runs before
# training. The recorder now resets it at train start and keeps the earlier peak apart. FSDP t5-xl only; the one-GPU
# training peak (3.51 GiB, no sanity check in that run) is call x2's. Ends by ~160 s.
source benchmarks/calls/prelude.sh
export BUDGET=160
timeout -k 5 148 python benchmarks/multi_gpu.py --skip ddp1 ddp2 single-xl --deadline-s 138 \
  --what multi-gpu-fsdp-peak-s11 --out $W/res > $W/multi-gpu.log 2>&1
finish
