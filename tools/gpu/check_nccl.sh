#!/usr/bin/env bash
# tools/gpu/check_nccl.sh BUNDLE OUT — the NCCL KV handoff on a machine with two GPUs (the device
# machine's nvidia-h200-x2), from binaries built elsewhere: BUNDLE holds bin/indexcache and
# bin/handoff_bench with their libraries (/work/shared/tools/device-bundle BUNDLE build/tools/indexcache
# build/bench/handoff/handoff_bench). Writes into OUT:
#   check.log    every step and its verdict
#   clusters.log the clusters' own logs
#   handoff-*.{json,md}  bench/handoff/handoff_bench's report (copy into bench/results/)
#
# 1. check_cluster.sh: for two IndexCache patterns, greedy output of a cluster (router, one prefill
#    worker, one decode worker, prompt in several prefill chunks) with --transport grpc, tcp and nccl
#    (prefill on GPU 0, decode on GPU 1) must equal the in-process engine's, token for token.
# 2. handoff_bench: per transport, a verified handoff accepted, a corrupted one rejected with
#    DATA_LOSS and the next accepted (real NCCL between the two GPUs); then the bandwidth of each
#    transport for a large handoff beside the NCCL, staging, memcpy and crc32 ceilings of the same run.
# Exits non-zero when any check fails.
set -uo pipefail
bundle=${1:?usage: check_nccl.sh BUNDLE OUT}
out=${2:?usage: check_nccl.sh BUNDLE OUT}
mkdir -p "$out"
# NVLink multicast stays off on the shared GPU hosts, in this shell and every child.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export LD_LIBRARY_PATH="$bundle/lib:/usr/local/cuda-13.0/targets/x86_64-linux/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
bin=$bundle/bin
log=$out/check.log
failures=0
say() { echo "$*" | tee -a "$log"; }

say "== $(date -u +%FT%TZ) $(nvidia-smi -L | tr '\n' ';')"
nvidia-smi topo -m >>"$log" 2>&1

tools/gpu/check_cluster.sh "$bundle" "$out" cpu "grpc tcp nccl" models/glm-dsa-tiny-random || failures=$((failures + 1))

say "== handoff_bench"
if "$bin/handoff_bench" --out "$out" --reps 3 --prefill-gpu 0 --decode-gpu 1 2>&1 | tee -a "$log"; then
  say "handoff_bench: PASS"
else
  say "handoff_bench: FAIL"
  failures=$((failures + 1))
fi
say "== failures: $failures"
exit $((failures > 0))
