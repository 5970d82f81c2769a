#!/usr/bin/env bash
# Sets up, builds, and streams a completion from the bundled model: the README's run command.
# Extra arguments go to `indexcache generate` (e.g. --index-freq 4, --temperature 0.8).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release > /dev/null
cmake --build build -j "$(nproc)" --target indexcache
./build/tools/indexcache generate --model models/glm-dsa-tiny-random \
  --prompt "The licenses for most software are designed to" --max-new-tokens 48 "$@"
