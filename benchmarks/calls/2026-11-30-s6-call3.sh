#!/usr/bin/env bash
# Device call 3 of session 6 (nvidia-h200-x2), the last of its budget. Phase 1, both GPUs: benchmarks/multi_gpu.py
# (DDP 1 vs 2 GPUs with flat gradients under graphs; FSDP t5-xl memory). Phase 2 at once: GPU 0 t5-large mb16 recipe
# vs lit-qsum defaults (fused RMS norms now on); GPU 1 the fast path's GPU tests without the compiled fit (over 200 s of
# compiling). Logs are tarred into $OUT every 20 s, so a killed call still brings them back.
set -u
pkill -f speed.py; pkill -f pytest; sleep 1
export PYTHONPATH=$PWD/.device-site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 LIT_QSUM_CACHE=$PWD/outputs/cache \
  TORCHINDUCTOR_CACHE_DIR=$PWD/outputs/inductor TOKENIZERS_PARALLELISM=false \
  NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
W=$PWD/outputs/call3; rm -rf $W; mkdir -p $W/logs $W/res
( while sleep 20; do tar czf $OUT/.w.tgz -C $W . 2>/dev/null && mv $OUT/.w.tgz $OUT/call3.tgz; done ) &
TARRER=$!
S=$(date +%s)
timeout -k 5 290 python benchmarks/multi_gpu.py --deadline-s 270 --out $W/res > $W/multi-gpu.log 2>&1
echo "multi_gpu rc=$? after $(( $(date +%s) - S )) s" >> $W/multi-gpu.log
PAD='{"data":{"pad_to_multiple_of":64}}'
left=$(( 555 - ($(date +%s) - S) ))
(
  export CUDA_VISIBLE_DEVICES=0
  timeout -k 5 $left python benchmarks/speed.py --shapes t5-large --tools hf lit-qsum --steps 12 --what speed-mb16-t5-fused-norms \
    --lit-variant "default=$PAD" --worker-timeout $(( (left - 10) / 2 )) --logs $W/logs --out $W/res > $W/gpu0-t5.log 2>&1
) &
(
  export CUDA_VISIBLE_DEVICES=1 TORCHINDUCTOR_CACHE_DIR=/tmp/inductor-tests  # tests may not write into outputs/
  timeout -k 5 $(( left - 5 )) python -m pytest -m gpu tests/fastpath tests/callbacks -rA --tb=short -p no:cacheprovider \
    -o faulthandler_timeout=0 --deselect "tests/fastpath/test_cuda_graphs.py::test_fit_with_graphs_matches_fit_without_on_a_gpu[True]" \
    --junitxml=$W/gpu-tests.xml > $W/gpu1-pytest.log 2>&1
  echo "pytest rc=$?" >> $W/gpu1-pytest.log
) &
wait -n; wait -n
kill $TARRER
cp $W/res/*.partial.json $W/ 2>/dev/null
tar czf $OUT/.w.tgz -C $W . && mv $OUT/.w.tgz $OUT/call3.tgz
ls -la $OUT
