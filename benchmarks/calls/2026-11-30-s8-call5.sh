#!/usr/bin/env bash
# Session 8, call 5 (the last ~200 s of device time): call 4's FSDP run with the memory history on failed in a
# checkpointed recompute's dropout (SystemError: returned NULL without setting an exception, inside the backward).
# This is the FSDP t5-xl run without the snapshot: today's per-GPU peak against call 2's one-GPU peak (2.83 GiB).
source benchmarks/calls/prelude.sh
timeout -k 5 135 python benchmarks/multi_gpu.py --skip ddp1 ddp2 single-xl --deadline-s 130 \
  --out $W/res > $W/fsdp.log 2>&1
finish
