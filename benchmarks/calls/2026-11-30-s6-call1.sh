#!/usr/bin/env bash
# Device call 1 of session 6 (nvidia-h200-x2): GPU 0 re-measures the seq2seq shapes at micro-batch 16 against the
# recipe (the #16 / #15 regression check); GPU 1 runs the GPU tests of the fast path, then the decoder shape with and
# without chunked_loss. The two GPUs run at once; GPU 1's jobs are single-process (the host has 32 cores).
set -u
export PYTHONPATH=$PWD/.device-site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 LIT_QSUM_CACHE=$PWD/outputs/cache \
  TORCHINDUCTOR_CACHE_DIR=$PWD/outputs/inductor TOKENIZERS_PARALLELISM=false
mkdir -p $OUT/logs
nvidia-smi --query-gpu=name,memory.total --format=csv > $OUT/gpus.txt 2>&1
PAD='{"data":{"pad_to_multiple_of":64}}'
ISO='{"data":{"pad_to_multiple_of":64},"module":{"speed":{"fp32_modules_in_bf16":false,"contiguous_attention_bias":false}}}'
(
  export CUDA_VISIBLE_DEVICES=0
  timeout 320 python benchmarks/speed.py --shapes t5-large --tools hf lit-qsum --steps 12 --what speed-mb16-t5 \
    --lit-variant "default=$PAD" --lit-variant "no-bf16-wo-no-bias-fix=$ISO" --worker-timeout 100 \
    --logs $OUT/logs --out $OUT > $OUT/gpu0-t5.log 2>&1
  timeout 250 python benchmarks/speed.py --shapes kobart bart-large --tools hf lit-qsum --steps 12 --what speed-mb16-bart \
    --lit-variant "default=$PAD" --worker-timeout 60 --logs $OUT/logs --out $OUT > $OUT/gpu0-bart.log 2>&1
) &
(
  export CUDA_VISIBLE_DEVICES=1
  timeout 300 python -m pytest -m gpu tests/fastpath -q -o faulthandler_timeout=140 -p no:cacheprovider \
    > $OUT/gpu1-pytest-fastpath.log 2>&1
  echo "pytest rc=$?" >> $OUT/gpu1-pytest-fastpath.log
  timeout 260 python benchmarks/speed.py --shapes qwen2.5-1.5b --tools lit-qsum --steps 6 --what speed-qwen-chunked \
    --lit-variant "default=$PAD" --lit-variant 'chunked-loss={"data":{"pad_to_multiple_of":64},"module":{"speed":{"chunked_loss":true}}}' \
    --worker-timeout 120 --logs $OUT/logs --out $OUT > $OUT/gpu1-qwen.log 2>&1
) &
wait
nvidia-smi > $OUT/nvidia-smi-end.txt 2>&1
ls -la $OUT
