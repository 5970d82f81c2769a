#!/usr/bin/env bash
# tools/gpu/check_nccl.sh BUNDLE OUT — the NCCL KV handoff on a machine with two GPUs (the device
# machine's nvidia-h200-x2), from binaries built elsewhere: BUNDLE holds bin/indexcache and
# bin/handoff_bench with their libraries (/work/shared/tools/device-bundle BUNDLE build/tools/indexcache
# build/bench/handoff/handoff_bench). Writes into OUT:
#   check.log    every step and its verdict
#   clusters.log the clusters' own logs
#   handoff-*.{json,md}  bench/handoff/handoff_bench's report (copy into bench/results/)
#
# 1. For two IndexCache patterns (all Full; --index-freq 4), greedy output of a cluster (router, one
#    prefill worker, one decode worker, prompt in several prefill chunks) with --transport grpc, tcp
#    and nccl (prefill on GPU 0, decode on GPU 1) must equal the in-process engine's, token for token.
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

model=models/glm-dsa-tiny-random
# About 300 tokens: with --max-batch-tokens 64 the prefill ships its rows in 5 steps.
prompt=$(printf 'The prefill worker computes the cache rows of every layer and hands them to the decode worker. %.0s' $(seq 1 16))
sampling=(--temperature 0 --max-new-tokens 24 --ignore-eos)
ids() { /usr/bin/env python3 -c 'import json, sys; print(json.load(sys.stdin)["output_ids"])'; }

for pattern in "" "--index-freq 4"; do
  # shellcheck disable=SC2086  # $pattern is zero or two words
  engine=$("$bin/indexcache" generate --model "$model" --prompt "$prompt" --json "${sampling[@]}" $pattern | ids)
  say "engine [${pattern:-all Full}]: $engine"
  for transport in grpc tcp nccl; do
    cluster_log=$(mktemp)
    # shellcheck disable=SC2086
    "$bin/indexcache" cluster up --model "$model" --transport "$transport" --max-batch-tokens 64 --threads 4 \
      $pattern >"$cluster_log" 2>&1 &
    cluster=$!
    router=""
    for _ in $(seq 1 600); do
      router=$(awk '/^ready /{print $2}' "$cluster_log")
      [[ -n $router ]] && break
      kill -0 $cluster 2>/dev/null || break
      sleep 0.1
    done
    got="(no cluster)"
    if [[ -n $router ]]; then
      got=$("$bin/indexcache" client generate --router "$router" --prompt "$prompt" --json "${sampling[@]}" \
              --timeout 120 | ids)
    fi
    if [[ $got == "$engine" && -n $engine ]]; then verdict=PASS; else verdict=FAIL; failures=$((failures + 1)); fi
    say "cluster $transport [${pattern:-all Full}]: $verdict $got"
    kill -TERM $cluster 2>/dev/null
    wait $cluster
    { echo "---- cluster $transport [${pattern:-all Full}]"; cat "$cluster_log"; } >>"$out/clusters.log"
    rm -f "$cluster_log"
  done
done

say "== handoff_bench"
if "$bin/handoff_bench" --out "$out" --reps 3 --prefill-gpu 0 --decode-gpu 1 2>&1 | tee -a "$log"; then
  say "handoff_bench: PASS"
else
  say "handoff_bench: FAIL"
  failures=$((failures + 1))
fi
say "== failures: $failures"
exit $((failures > 0))
