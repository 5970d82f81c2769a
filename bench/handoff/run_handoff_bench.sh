#!/usr/bin/env bash
# Builds and runs bench/handoff/handoff_bench on a machine with two GPUs and the CUDA toolkit's NCCL:
# gRPC vs TCP vs NCCL handoff bandwidth with its ceilings, report into bench/results/handoff-<date>.*
#   bench/handoff/run_handoff_bench.sh [--reps N] [--prefill-gpu G] [--decode-gpu G]
# BUILD=dir picks the build folder (default build). The device machine runs it from prebuilt
# binaries instead: tools/gpu/check_nccl.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${BUILD:-build}
export NCCL_NVLS_ENABLE=0  # NVLink multicast stays off on shared GPU hosts
[[ -d $build ]] || cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build "$build" --target handoff_bench
"$build/bench/handoff/handoff_bench" --out bench/results "$@"
