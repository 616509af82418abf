#!/usr/bin/env bash
# Prepared in session 10 for a next session's device call (nvidia-h200-x2), not yet run; see
# benchmarks/results/2026-11-30-speed-notes-7.md ("Next"). Issue #14: FSDP t5-xl with the adapter's optimizer state
# sharded (ZeRO-1, the default since session 10's last commit) and without it, and without backward prefetch, against the one-GPU peak (3.51 GiB in
# session 10), then the several-GPU tests (their FSDP test now runs ZeRO-1 over NCCL). Ends by ~545 s.
source benchmarks/calls/prelude.sh
timeout -k 5 330 python benchmarks/multi_gpu.py --skip ddp1 ddp2 --deadline-s 320 --what multi-gpu-zero \
  --fsdp-variant "no-zero=--trainer.strategy.init_args.shard_optimizer_state false" \
  --fsdp-variant "no-prefetch=--trainer.strategy.init_args.backward_prefetch null" --out $W/res > $W/multi-gpu.log 2>&1
PYT="python -m pytest -m gpu -v -rA --tb=short -p no:cacheprovider -o faulthandler_timeout=0 --durations=0"
T=$(( $(left) - 15 ))
timeout -k 5 $T $PYT --timeout $(( T - 10 )) tests/distributed/test_multi_gpu_cuda.py > $W/multi-gpu-tests.log 2>&1
echo "rc=$?" >> $W/multi-gpu-tests.log
finish
