#!/usr/bin/env bash
# Prepared at the end of session 7 (nvidia-h200-x2), not yet run: issue #14's FSDP memory. FSDP t5-xl on 2 GPUs and
# the same QLoRA on one GPU, each with optimizer step 4 recorded by torch's CUDA memory history
# (benchmarks/memory_snapshot.py): what was live at each step's peak, by allocating code, so FSDP's extra ~0.9 GiB
# per step (session 6) has a name. Both now store T5's wo in bf16 (speed.fp32_modules_in_bf16). Ends by ~560 s.
source benchmarks/calls/prelude.sh
python benchmarks/multi_gpu.py --skip ddp1 ddp2 --snapshot-step 4 --deadline-s $(left) --out $W/res > $W/fsdp-memory.log 2>&1
finish
