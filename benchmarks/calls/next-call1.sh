#!/usr/bin/env bash
# Prepared in session 12 for a next session's device call (nvidia-h200-x2), not yet run; see
# benchmarks/results/2026-11-30-multi-gpu-notes-s12.md ("Left"). Issue #14's follow-ups: the several-GPU tests with
# load_on_cpu now the FSDP default (FSDP fit/validate/checkpoint/resume under DDP has not run on GPUs with it), then
# DDP t5-large 1 vs 2 GPUs with the steady tokens/s (timed steps without a graph capture: is the above-linear scaling
# of session 12 a capture inside the one-GPU window?), then FSDP without ZeRO-1 (its share of the training peak)
# (against the one-GPU t5-xl peak, 3.51 GiB in all three of its runs so far; its run is left out for time). Ends by
# ~570 s.
source benchmarks/calls/prelude.sh
export BUDGET=570
PYT="python -m pytest -m gpu -v -rA --tb=short -p no:cacheprovider -o faulthandler_timeout=0 --durations=0"
timeout -k 5 300 $PYT --timeout 290 tests/distributed/test_load_on_cpu_cuda.py \
  tests/distributed/test_multi_gpu_cuda.py > $W/gpu-tests.log 2>&1
echo "rc=$?" >> $W/gpu-tests.log
S_=--trainer.strategy.init_args
D=$(( $(left) - 15 ))
timeout -k 5 $(( D + 10 )) python benchmarks/multi_gpu.py --deadline-s $D --what multi-gpu-s13 --skip fsdp2 single-xl \
  --fsdp-variant "no-zero=$S_.shard_optimizer_state false" --out $W/res > $W/multi-gpu.log 2>&1
finish
