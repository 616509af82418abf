#!/usr/bin/env bash
# Prepared in session 10 for a next session's device call (nvidia-h200-x2), not yet run; see
# benchmarks/results/2026-11-30-speed-notes-7.md ("Next"). Issue #14: DDP's 2-GPU/1-GPU scaling again with session
# 10's defaults (bf16 activations, chunked seq2seq loss, cuDNN attention in graphs; 1.92x with session 9's), and the
# decoder's window with the padding session 10's call 3 left out (GPU 1 after DDP is done). Ends by ~545 s.
source benchmarks/calls/prelude.sh
timeout -k 5 330 python benchmarks/multi_gpu.py --skip fsdp2 single-xl --deadline-s 320 --what multi-gpu-ddp \
  --out $W/res > $W/multi-gpu.log 2>&1
CUDA_VISIBLE_DEVICES=1 TORCHINDUCTOR_CACHE_DIR=/tmp/inductor1 python benchmarks/speed.py --shapes qwen2.5-1.5b \
  --tools hf lit-qsum --warmup 10 --steps 30 --what speed-decoder-pad64 \
  --lit-variant 'default={"data":{"pad_to_multiple_of":64}}' \
  --worker-timeout 110 --deadline-s $(( $(left) - 10 )) --logs $W/logs1 --out $W/res > $W/gpu1-decoder.log 2>&1
finish
