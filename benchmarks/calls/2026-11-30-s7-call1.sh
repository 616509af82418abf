#!/usr/bin/env bash
# Session 7, call 1 (nvidia-h200-x2), run 2026-11-30 as prepared at the end of session 6; see
# benchmarks/results/2026-11-30-speed-notes-3.md ("Next"). Everything ends by ~560 s; logs are re-tarred into
# $OUT/call.tgz every 15 s, so a killed call still brings them back (only 8 files come back from $OUT).
# GPU 1: the compiled-capture GPU tests (does the eager-context fix make a compiled step capturable?), then
#        t5-large at micro-batch 64 against the recipe.
# GPU 0: the decoder-only row in one call: recipe, lit-qsum defaults (chunked loss), the plain Unsloth loop, lit-qsum's
#        Unsloth backend.
set -u
export PYTHONPATH=$PWD/.device-site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 LIT_QSUM_CACHE=$PWD/outputs/cache \
  TORCHINDUCTOR_CACHE_DIR=$PWD/outputs/inductor TOKENIZERS_PARALLELISM=false
W=$PWD/outputs/call; rm -rf $W; mkdir -p $W/logs $W/res
( while sleep 15; do tar czf $OUT/.call.tgz -C $W . 2>/dev/null && mv $OUT/.call.tgz $OUT/call.tgz; done ) &
TARRER=$!
S=$(date +%s)
PAD='{"data":{"pad_to_multiple_of":64}}'
(
  export CUDA_VISIBLE_DEVICES=0
  python benchmarks/speed.py --shapes qwen2.5-1.5b --tools hf lit-qsum unsloth --steps 6 --what speed-decoder \
    --lit-variant "default=$PAD" \
    --lit-variant "unsloth-backend={\"data\":{\"pad_to_multiple_of\":64},\"module\":{\"backend\":\"unsloth\"}}" \
    --worker-timeout 300 --deadline-s 545 --logs $W/logs --out $W/res > $W/gpu0-decoder.log 2>&1
) &
(
  export CUDA_VISIBLE_DEVICES=1
  # tests may not write into the checkout's outputs/ (the autouse guard), so Inductor's cache goes elsewhere
  TORCHINDUCTOR_CACHE_DIR=/tmp/inductor-tests timeout -k 5 300 python -m pytest -m gpu \
    tests/fastpath/test_cuda_graphs.py -rA --tb=short -p no:cacheprovider -o faulthandler_timeout=0 \
    --junitxml=$W/gpu-tests.xml > $W/gpu1-pytest.log 2>&1
  echo "pytest rc=$?" >> $W/gpu1-pytest.log
  python benchmarks/speed.py --shapes t5-large --tools hf lit-qsum --steps 6 --micro-batch 64 --what speed-mb64-t5 \
    --lit-variant "default=$PAD" --worker-timeout 150 --deadline-s $(( 545 - ($(date +%s) - S) )) \
    --logs $W/logs --out $W/res > $W/gpu1-mb64.log 2>&1
) &
wait -n; wait -n
kill $TARRER
tar czf $OUT/.call.tgz -C $W . && mv $OUT/.call.tgz $OUT/call.tgz
ls -la $OUT
