#!/usr/bin/env bash
# The C++ SDK as a user gets it: `cmake --install` into a fresh prefix, the examples configured out of
# the tree with find_package(indexcache_client) and built, the installed files free of build-tree
# paths, and the built example answering through a local cluster with the tokens `client generate` gets.
#   install_test.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
build=$1
src=$2
source "$(dirname "$0")/local_cluster.sh"

cmake --install "$build" --prefix "$work/prefix" >/dev/null
if grep -rlF -e "$build" -e "$src" "$work/prefix"; then
  echo "FAIL: the installed files above name the build or source tree" >&2
  exit 1
fi
if ! { cmake -S "$src/sdk/cpp/examples" -B "$work/examples" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$work/prefix" && cmake --build "$work/examples" -j 2; } >"$work/examples.log" 2>&1; then
  cat "$work/examples.log" >&2
  echo "FAIL: the examples did not build against the installed package" >&2
  exit 1
fi

start_cluster "$build" "$src"
prompt="The river ran past the old mill"
example=$("$work/examples/blocking_generate" --router "$router" --prompt "$prompt" --max-new-tokens 12 --temperature 0)
expected=$("$build/tools/indexcache" client generate --router "$router" --prompt "$prompt" --max-new-tokens 12 \
  --temperature 0 --json | python3 -c 'import json, sys; print(" ".join(map(str, json.load(sys.stdin)["output_ids"])))')
if ! grep -qxF "ids: $expected" <<<"$example"; then
  echo "FAIL: the installed example printed"$'\n'"$example"$'\n'"without client generate's ids: $expected" >&2
  exit 1
fi
echo "1 passed, 0 failed"
