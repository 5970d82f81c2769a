#!/usr/bin/env bash
# Builds indexcache_serving_bench and the `indexcache` binary it starts, then runs the benchmark on the
# bundled model, writing bench/results/serving-<UTC date>.{json,md}. Extra arguments go to the
# benchmark (--concurrency, --duration, --prompt-len, --max-new-tokens, --transports; see --help).
# Environment: BUILD_DIR (default build), OMP_WAIT_POLICY (default passive: the services share the cores).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
build_dir="${BUILD_DIR:-$root/build}"
if [[ ! -f "$build_dir/build.ninja" ]] &&
   ! cmake -S "$root" -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release -DINDEXCACHE_CUDA=OFF >/dev/null; then
  echo "run_serving_bench.sh: cmake configure failed" >&2
  exit 1
fi
if ! cmake --build "$build_dir" --target indexcache_serving_bench indexcache -j2 >"$build_dir/serving-bench-build.log" 2>&1; then
  tail -n 40 "$build_dir/serving-bench-build.log" >&2
  echo "run_serving_bench.sh: the build failed (full log: $build_dir/serving-bench-build.log)" >&2
  exit 1
fi

export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-passive}"
export INDEXCACHE_LOG_LEVEL="${INDEXCACHE_LOG_LEVEL:-warning}"
stamp="$(date -u +%Y%m%d-%H%M%S)"
out="$root/bench/results/serving-$stamp"
mkdir -p "$root/bench/results"

cd "$root"
"$build_dir/bench/serving/indexcache_serving_bench" --model models/glm-dsa-trained \
  --json "$out.json" --markdown "$out.md" "$@"
echo "wrote $out.json and $out.md"
