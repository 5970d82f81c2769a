#!/usr/bin/env bash
# The README's run command: sets up (Debian 12 packages), builds, starts a local cluster (router, one
# prefill and one decode worker on loopback) on the bundled model with the searched 1/4 IndexCache
# pattern (tools/train/searched_patterns.json: 4 layers keep their indexer, 12 reuse a Full layer's
# top-k), streams one served answer through `indexcache client generate`, and stops the cluster.
# The prompt — the first entries of the held-out dictionary text — is longer than the model's
# index_topk (128), so the indexers' top-k selection and its reuse both act; decoding is greedy unless
# a --temperature is given. Extra arguments go to the client (e.g. --temperature 0.8,
# --max-new-tokens 64, --json).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release > /dev/null
cmake --build build -j "$(nproc)" --target indexcache

log=$(mktemp -d)
pattern=$(python3 -c 'import json; print(json.load(open("tools/train/searched_patterns.json"))["1/4"])')
./build/tools/indexcache cluster up --model models/glm-dsa-trained --index-pattern "$pattern" \
  > "$log/cluster.out" 2> "$log/cluster.log" &
cluster=$!
trap 'kill -TERM $cluster 2>/dev/null; wait $cluster 2>/dev/null || true' EXIT
for _ in $(seq 600); do
  grep -q '^ready ' "$log/cluster.out" && break
  kill -0 $cluster 2>/dev/null || { cat "$log/cluster.log"; echo "the cluster failed to start" >&2; exit 1; }
  sleep 0.1
done
cat "$log/cluster.out"
router=$(awk '/^ready /{print $2}' "$log/cluster.out")
[[ -n $router ]] || { echo "the cluster did not become ready in 60 s; its log: $log/cluster.log" >&2; exit 1; }
sampling=(--temperature 0)
for arg in "$@"; do [[ $arg == --temperature* ]] && sampling=(); done
./build/tools/indexcache client generate --router "$router" \
  --prompt "$(head -n 24 data/test.txt)" --max-new-tokens 48 "${sampling[@]}" "$@"
