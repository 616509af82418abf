#!/usr/bin/env bash
# Session 8, call 4 (nvidia-h200-x2, the session's last ~280 s of device time): issue #14's FSDP memory. In call 3
# the FSDP run did not start (77 s left of its deadline, 120 s needed). FSDP t5-xl on 2 GPUs with optimizer step 4
# recorded by torch's CUDA memory history: what is live at the step's peak, by allocating code.
source benchmarks/calls/prelude.sh
timeout -k 5 185 python benchmarks/multi_gpu.py --skip ddp1 ddp2 single-xl --snapshot-step 4 --deadline-s 180 \
  --out $W/res > $W/fsdp-memory.log 2>&1
finish
