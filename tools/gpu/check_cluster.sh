#!/usr/bin/env bash
# tools/gpu/check_cluster.sh BUNDLE OUT DEVICE "TRANSPORTS" [MODEL...] — disaggregated serving equals
# the in-process engine, token for token: for each model (default: the bundled trained model and the
# random test model) and two IndexCache patterns (all Full; --index-freq 4), the greedy output of a
# cluster (router, one prefill worker, one decode worker, --device DEVICE, the prompt in several
# prefill chunks so the handoff ships several segments) over each transport must equal
# `indexcache generate` on the same device with the same chunk size, the prompt sent twice (the second
# time from the prefill worker's prefix cache). BUNDLE holds bin/indexcache and
# its libraries (/work/shared/tools/device-bundle). Appends to OUT/check.log and OUT/clusters.log;
# exits non-zero when a cluster's output differs. Used by check_cuda.sh (DEVICE cuda, grpc and tcp)
# and check_nccl.sh (the CPU engine, grpc, tcp and nccl between two GPUs).
set -uo pipefail
bundle=${1:?usage: check_cluster.sh BUNDLE OUT DEVICE TRANSPORTS [MODEL...]}
out=${2:?usage: check_cluster.sh BUNDLE OUT DEVICE TRANSPORTS [MODEL...]}
device=${3:?usage: check_cluster.sh BUNDLE OUT DEVICE TRANSPORTS [MODEL...]}
read -r -a transports <<<"${4:?usage: check_cluster.sh BUNDLE OUT DEVICE TRANSPORTS [MODEL...]}"
shift 4
models=("$@")
[[ ${#models[@]} -gt 0 ]] || models=(models/glm-dsa-trained models/glm-dsa-tiny-random)
export LD_LIBRARY_PATH="$bundle/lib:/usr/local/cuda-13.0/targets/x86_64-linux/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
bin=$bundle/bin
log=$out/check.log
mkdir -p "$out"
failures=0
say() { echo "$*" | tee -a "$log"; }

# About 300 tokens: with --max-batch-tokens 64 the prefill ships its rows in 5 segments.
prompt=$(printf 'The prefill worker computes the cache rows of every layer and hands them to the decode worker. %.0s' $(seq 1 16))
engine_flags=(--device "$device" --max-batch-tokens 64)
# The truth never shares a block: one prompt, the prefix cache off.
sampling=(--temperature 0 --max-new-tokens 24 --ignore-eos)
ids() { /usr/bin/env python3 -c 'import json, sys; print(json.load(sys.stdin)["output_ids"])'; }

for model in "${models[@]}"; do
  for pattern in "" "--index-freq 4"; do
    what="$(basename "$model") ${pattern:-all Full} on $device"
    # shellcheck disable=SC2086  # $pattern is zero or two words
    engine=$("$bin/indexcache" generate --model "$model" --prompt "$prompt" --json "${engine_flags[@]}" \
               --prefix-cache=false "${sampling[@]}" $pattern | ids)
    say "engine [$what]: $engine"
    for transport in "${transports[@]}"; do
      cluster_log=$(mktemp)
      # shellcheck disable=SC2086
      "$bin/indexcache" cluster up --model "$model" --transport "$transport" "${engine_flags[@]}" --threads 4 \
        $pattern >"$cluster_log" 2>&1 &
      cluster=$!
      router=""
      for _ in $(seq 1 900); do
        router=$(awk '/^ready /{print $2}' "$cluster_log")
        [[ -n $router ]] && break
        kill -0 $cluster 2>/dev/null || break
        sleep 0.1
      done
      # The prompt twice: the second time the prefill worker's prefix cache holds all but its last block,
      # whose rows it hands off from the cache (the decode worker gets every position either way).
      for run in cold cached; do
        got="(no cluster)"
        if [[ -n $router ]]; then
          got=$("$bin/indexcache" client generate --router "$router" --prompt "$prompt" --json "${sampling[@]}" \
                  --timeout 120 | ids)
        fi
        if [[ $got == "$engine" && -n $engine ]]; then verdict=PASS; else verdict=FAIL; failures=$((failures + 1)); fi
        say "cluster $transport [$what, $run]: $verdict $got"
      done
      kill -TERM $cluster 2>/dev/null
      wait $cluster
      { echo "---- cluster $transport [$what]"; cat "$cluster_log"; } >>"$out/clusters.log"
      rm -f "$cluster_log"
    done
  done
done
exit $((failures > 0))
