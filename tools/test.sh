#!/usr/bin/env bash
# Sets up (Debian 12 packages), builds with warnings as errors (CUDA sources too when nvcc exists) and
# runs every test. This is the README's test command and exactly what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DINDEXCACHE_WERROR=ON
cmake --build build -j "$(nproc)"
ctest --test-dir build --output-on-failure -j 2
