# Sourced by the prepared device-call scripts (next-call*.sh): the checkout's environment on the GPU machine, a work
# folder under /tmp (never the checkout's outputs/, which the tests' guard watches), its contents re-tarred into
# $OUT every 15 s (a call killed at its limit still brings them back; only 8 files come back from $OUT, so one tarball),
# `left` (seconds to a $BUDGET s budget, 545 unless set) and `finish` (the last tarball).
set -u
export PYTHONPATH=$PWD/.device-site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 LIT_QSUM_CACHE=/tmp/lq-cache \
  TOKENIZERS_PARALLELISM=false NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
W=/tmp/call; rm -rf $W; mkdir -p $W/logs $W/res $W/prof
( while sleep 15; do tar czf $OUT/.call.tgz -C $W . 2>/dev/null && mv $OUT/.call.tgz $OUT/call.tgz; done ) &
TARRER=$!
S=$(date +%s)
left() { echo $(( ${BUDGET:-545} - ($(date +%s) - S) )); }
finish() {
  kill $TARRER
  tar czf $OUT/.call.tgz -C $W . && mv $OUT/.call.tgz $OUT/call.tgz
  ls -la $OUT
}
