#!/usr/bin/env bash
# What a co-located decode worker's imports cost the prefill beside it (issue 12), on the GPU machine:
#   bench/cluster/run_gpu_neighbor.sh BUNDLE OUT
# Times the engine's 16K prefill (the 16-layer model of run_cluster_ttft.sh) alone, then with
# bench/cuda/gpu_neighbor_load running in another process in each mode (pinned copies into the pool
# only; copy + scatter kernel; kernel only) at the rate a handoff arrives, then alone again. The
# bundle holds bin/indexcache_cluster_ttft_bench and bin/gpu_neighbor_load (device-bundle).
# Environment: CASE [16384:8:3]; GBPS [2]; MODES ["copies scatter kernel"], copies-hostfunc too; BATCH_MB [4].
set -euo pipefail
bundle=$(cd "${1:?usage: run_gpu_neighbor.sh BUNDLE OUT}" && pwd)
out=${2:?usage: run_gpu_neighbor.sh BUNDLE OUT}
case_=${CASE:-16384:8:3}
gbps=${GBPS:-2}
modes=${MODES:-copies scatter kernel}
batch_mb=${BATCH_MB:-4}
export LD_LIBRARY_PATH="$bundle/lib:/usr/local/cuda-13.0/targets/x86_64-linux/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export INDEXCACHE_LOG_LEVEL=warning
mkdir -p "$out"
cache=${MODEL_CACHE:-/tmp/indexcache-cluster-ttft-models}
mkdir -p "$cache"
source bench/cluster/bench_models.sh
model=$(small_model)

engine() {  # engine NAME: one engine-prefill run, its median printed
  "$bundle/bin/indexcache_cluster_ttft_bench" engine-prefill --model "$model" --case "$case_" --device cuda \
    --max-batch-tokens 8192 --kv-cache-mb 4096 --out "$out/engine-$1.json" >/dev/null
  python3 - "$out/engine-$1.json" "$1" <<'PY'
import json, statistics, sys
c = json.load(open(sys.argv[1]))["cases"][0]
print(f"{sys.argv[2]:<16} median {c.get('median_s', 0):.4f} s, export on {c.get('export_median_s', 0):.4f} s, "
      f"prompts {' '.join(f'{x:.3f}' for x in c.get('seconds', []))} {c.get('error', '')}")
PY
}

engine alone-1
for mode in $modes; do
  "$bundle/bin/gpu_neighbor_load" --mode "$mode" --gbps "$gbps" --batch-mb "$batch_mb" --seconds 600 \
    > "$out/neighbor-$mode.json" &
  pid=$!
  sleep 1
  engine "beside-$mode"
  kill "$pid"; wait "$pid" 2>/dev/null || true
done
engine alone-2
