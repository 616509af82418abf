#!/usr/bin/env bash
# Device call 2 of session 6 (nvidia-h200-x2). GPU 0: t5-large mb16 with the fused RMS norms against the recipe and
# without them, then t5-large / bart-large at mb64, then compiled blocks under graphs (LIT_QSUM_GRAPHS_OVER_COMPILE).
# GPU 1: the fast path's GPU tests, then the decoder shape: recipe, lit-qsum defaults (chunked loss now on), the plain
# Unsloth loop and lit-qsum's Unsloth backend. Only 8 files come back: every log goes into one tarball.
set -u
export PYTHONPATH=$PWD/.device-site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 LIT_QSUM_CACHE=$PWD/outputs/cache \
  TORCHINDUCTOR_CACHE_DIR=$PWD/outputs/inductor TOKENIZERS_PARALLELISM=false
W=$PWD/outputs/call2; rm -rf $W; mkdir -p $W/logs $W/res
PAD='{"data":{"pad_to_multiple_of":64}}'
S=$(date +%s)
(
  export CUDA_VISIBLE_DEVICES=0
  timeout 200 python benchmarks/speed.py --shapes t5-large --tools hf lit-qsum --steps 12 --what speed-mb16-t5-norms \
    --lit-variant "default=$PAD" --lit-variant 'no-fused-norm={"data":{"pad_to_multiple_of":64},"module":{"speed":{"fused_rms_norm":false}}}' \
    --worker-timeout 65 --logs $W/logs --out $W/res > $W/gpu0-t5.log 2>&1
  timeout 230 python benchmarks/speed.py --shapes t5-large bart-large --tools hf lit-qsum --steps 6 --micro-batch 64 \
    --what speed-mb64 --lit-variant "default=$PAD" --worker-timeout 56 --logs $W/logs --out $W/res > $W/gpu0-mb64.log 2>&1
  left=$(( 560 - ($(date +%s) - S) ))
  LIT_QSUM_GRAPHS_OVER_COMPILE=1 timeout $left python benchmarks/speed.py --shapes t5-large --tools lit-qsum --steps 12 \
    --what speed-t5-compiled-graphs --lit-variant 'compiled-graphs={"data":{"pad_to_multiple_of":64},"module":{"speed":{"compile":true}}}' \
    --worker-timeout $((left - 5)) --logs $W/logs --out $W/res > $W/gpu0-compiled.log 2>&1
) &
(
  export CUDA_VISIBLE_DEVICES=1
  timeout 230 python -m pytest -m gpu tests/fastpath -q -rA --tb=short -o faulthandler_timeout=200 -p no:cacheprovider \
    > $W/gpu1-pytest-fastpath.log 2>&1
  echo "pytest rc=$?" >> $W/gpu1-pytest-fastpath.log
  left=$(( 560 - ($(date +%s) - S) ))
  timeout 210 python benchmarks/speed.py --shapes qwen2.5-1.5b --tools hf lit-qsum unsloth --steps 6 --what speed-decoder \
    --lit-variant "default=$PAD" --worker-timeout 80 --logs $W/logs --out $W/res > $W/gpu1-qwen.log 2>&1
  left=$(( 560 - ($(date +%s) - S) ))
  timeout $left python benchmarks/speed.py --shapes qwen2.5-1.5b --tools lit-qsum --steps 6 --what speed-decoder-unsloth-backend \
    --lit-variant "unsloth-backend={\"data\":{\"pad_to_multiple_of\":64},\"module\":{\"backend\":\"unsloth\"}}" \
    --worker-timeout $((left - 5)) --logs $W/logs --out $W/res > $W/gpu1-qwen-unsloth.log 2>&1
) &
wait
cp $W/res/*.partial.json $W/ 2>/dev/null
tar czf $OUT/call2.tgz -C $W . 
cp $W/res/*.md $OUT/ 2>/dev/null
ls -la $OUT $W/res
