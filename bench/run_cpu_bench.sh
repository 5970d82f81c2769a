#!/usr/bin/env bash
# Builds indexcache_bench if needed and runs it on the bundled model, writing
# bench/results/cpu-<UTC date>.{json,md}. Extra arguments go to the benchmark (see --help).
# Environment: BUILD_DIR (default build-bench); NO_BUILD=1 runs the binary already built;
# OMP_WAIT_POLICY (default active; use passive on a busy machine: see bench/README.md).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build_dir="${BUILD_DIR:-$root/build-bench}"
if [[ "${NO_BUILD:-0}" == 1 && -x "$build_dir/bench/indexcache_bench" ]]; then
  echo "NO_BUILD=1: running the existing $build_dir/bench/indexcache_bench" >&2
elif [[ ! -f "$build_dir/build.ninja" ]] &&
     ! cmake -S "$root" -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release -DINDEXCACHE_CUDA=OFF >/dev/null; then
  echo "run_cpu_bench.sh: cmake configure failed" >&2
  exit 1
elif ! cmake --build "$build_dir" --target indexcache_bench -j2 >"$build_dir/bench-build.log" 2>&1; then
  tail -n 40 "$build_dir/bench-build.log" >&2
  echo "run_cpu_bench.sh: the build failed (full log: $build_dir/bench-build.log)" >&2
  exit 1
fi

export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-active}"
export INDEXCACHE_LOG_LEVEL="${INDEXCACHE_LOG_LEVEL:-warning}"
commit="$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [[ -n "$(git -C "$root" status --porcelain --untracked-files=no 2>/dev/null)" ]]; then
  commit="$commit-dirty"
fi
stamp="$(date -u +%Y%m%d-%H%M%S)"
suffix=""
[[ "$OMP_WAIT_POLICY" != active ]] && suffix="-$(echo "$OMP_WAIT_POLICY" | tr 'A-Z' 'a-z')"
out="$root/bench/results/cpu-$stamp$suffix"
mkdir -p "$root/bench/results"

cd "$root"
"$build_dir/bench/indexcache_bench" --model models/glm-dsa-trained --git-commit "$commit" \
  --json "$out.json" --markdown "$out.md" "$@" >/dev/null
[[ -f "$out.md" ]] && echo "wrote $out.json and $out.md"
