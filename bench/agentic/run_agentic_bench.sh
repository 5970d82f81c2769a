#!/usr/bin/env bash
# The agentic multi-turn benchmark (issue 16, part 5): a trace of growing sessions replayed on a fresh
# router + PREFILL + DECODE workers, the workers' prefix cache off and then on. From the repository root:
#   bench/agentic/run_agentic_bench.sh [more indexcache_agentic_bench flags]
# writes OUT/agentic-<UTC date>.{json,md} (OUT default bench/results); commit the pair.
#
# On the CPU (default) it builds indexcache_agentic_bench and the `indexcache` binary in BUILD_DIR
# (default build) and runs the bundled models/glm-dsa-trained (max context 8192) with sizes a 2-core
# machine finishes in minutes. On the GPU machine it runs from a bundle (bin/ and lib/, made as
# bench/cluster/run_cluster_ttft.sh describes, with build-cuda/bench/agentic/indexcache_agentic_bench
# in it), on the paper-shaped model of bench/cluster/bench_models.sh:
#   BUNDLE=.device-bundle DEVICE=cuda MODEL=paper \
#     SESSIONS=16 TURNS=8 FIRST_TURN_TOKENS=16384 TURN_TOKENS=2048 MAX_NEW_TOKENS=32 PREFILL=2 DECODE=2 \
#     OUT="$OUT" bench/agentic/run_agentic_bench.sh --kv-cache-mb 12288 --max-batch-tokens 8192
#
# Environment (defaults in brackets): PREFILL [1], DECODE [1]; SESSIONS [8], TURNS [6],
# FIRST_TURN_TOKENS [1024], TURN_TOKENS [256], MAX_NEW_TOKENS [16], CONCURRENCY [4]; DEVICE [cpu];
# MODEL [models/glm-dsa-trained; `paper`: bench/cluster/bench_models.sh's paper shape, generated under
# MODEL_CACHE [/tmp/indexcache-cluster-ttft-models] on first use]; BUNDLE (run its bin/ instead of building); BUILD_DIR [build]; OUT;
# OMP_WAIT_POLICY [passive: the services share the cores].
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
prefill=${PREFILL:-1}
decode=${DECODE:-1}
sessions=${SESSIONS:-8}
turns=${TURNS:-6}
first_turn_tokens=${FIRST_TURN_TOKENS:-1024}
turn_tokens=${TURN_TOKENS:-256}
max_new_tokens=${MAX_NEW_TOKENS:-16}
concurrency=${CONCURRENCY:-4}
device=${DEVICE:-cpu}
model=${MODEL:-models/glm-dsa-trained}
out=${OUT:-bench/results}
if [[ $model == paper ]]; then
  cache=${MODEL_CACHE:-/tmp/indexcache-cluster-ttft-models}
  mkdir -p "$cache"
  source bench/cluster/bench_models.sh
  model=$(paper_model)
fi

if [[ -n ${BUNDLE:-} ]]; then
  bundle=$(cd "$BUNDLE" && pwd)
  export LD_LIBRARY_PATH="$bundle/lib:/usr/local/cuda-13.0/targets/x86_64-linux/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  bench="$bundle/bin/indexcache_agentic_bench"
  binary="$bundle/bin/indexcache"
  commit=$(cat "$bundle/COMMIT" 2>/dev/null || echo unknown)
else
  build_dir="${BUILD_DIR:-$root/build}"
  if [[ ! -f "$build_dir/build.ninja" ]] &&
     ! cmake -S "$root" -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release -DINDEXCACHE_CUDA=OFF >/dev/null; then
    echo "run_agentic_bench.sh: cmake configure failed" >&2
    exit 1
  fi
  if ! cmake --build "$build_dir" --target indexcache_agentic_bench indexcache -j2 >"$build_dir/agentic-bench-build.log" 2>&1; then
    tail -n 40 "$build_dir/agentic-bench-build.log" >&2
    echo "run_agentic_bench.sh: the build failed (full log: $build_dir/agentic-bench-build.log)" >&2
    exit 1
  fi
  bench="$build_dir/bench/agentic/indexcache_agentic_bench"
  binary="$build_dir/tools/indexcache"
  commit=$(git rev-parse HEAD 2>/dev/null || echo unknown)
fi
if command -v nvidia-smi >/dev/null && [[ $device == cuda ]]; then
  device_name=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
else
  device_name=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')
fi

export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-passive}"
export INDEXCACHE_LOG_LEVEL="${INDEXCACHE_LOG_LEVEL:-warning}"
mkdir -p "$out"
stem="$out/agentic-$(date -u +%Y%m%d-%H%M%S)"
command="PREFILL=$prefill DECODE=$decode SESSIONS=$sessions TURNS=$turns FIRST_TURN_TOKENS=$first_turn_tokens"
command+=" TURN_TOKENS=$turn_tokens MAX_NEW_TOKENS=$max_new_tokens CONCURRENCY=$concurrency DEVICE=$device"
command+=" MODEL=$model bench/agentic/run_agentic_bench.sh${*:+ $*}"
"$bench" --binary "$binary" --model "$model" --device "$device" --prefill "$prefill" --decode "$decode" \
  --sessions "$sessions" --turns "$turns" --first-turn-tokens "$first_turn_tokens" --turn-tokens "$turn_tokens" \
  --max-new-tokens "$max_new_tokens" --concurrency "$concurrency" --device-name "$device_name" \
  --git-commit "$commit" --command "$command" --json "$stem.json" --markdown "$stem.md" "$@"
echo "wrote $stem.json and $stem.md"
