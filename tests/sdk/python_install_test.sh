#!/usr/bin/env bash
# The Python SDK as a user gets it: `pip install` from a copy of the source folder (offline, into a
# venv that sees Debian's grpcio and protobuf), then the installed package — not the sources — talks to
# a local cluster: the same tokens as `client generate`, and the version `indexcache --version` names.
#   python_install_test.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
build=$1
src=$2
source "$(dirname "$0")/local_cluster.sh"

# A copy, so that the in-tree build leaves nothing in the checkout; proto/ beside it as in the tree.
mkdir -p "$work/tree/sdk"
cp -r "$src/sdk/python" "$work/tree/sdk/python"
cp -r "$src/proto" "$work/tree/proto"
rm -f "$work/tree/sdk/python/indexcache_client/generate_pb2"*.py
/usr/bin/python3 -m venv --system-site-packages "$work/venv"
"$work/venv/bin/pip" install --quiet --no-build-isolation --no-index "$work/tree/sdk/python"
rm -rf "$work/tree"

start_cluster "$build" "$src"

ids='[5, 17, 300, 42, 9, 1000, 77, 8, 640, 3]'
echo "$ids" >"$work/ids.json"
got=$(cd "$work" && "$work/venv/bin/python" - "$router" "$ids" <<'PY'
import json, sys
import indexcache_client
assert "/venv/" in indexcache_client.__file__, indexcache_client.__file__
with indexcache_client.Client(sys.argv[1], timeout=60) as client:
    result = client.generate(input_ids=json.loads(sys.argv[2]), max_new_tokens=12, temperature=0, ignore_eos=True)
print(indexcache_client.__version__, " ".join(map(str, result.output_ids)))
PY
)
expected_ids=$("$build/tools/indexcache" client generate --router "$router" --input-ids "$work/ids.json" \
  --max-new-tokens 12 --temperature 0 --ignore-eos --json |
  python3 -c 'import json, sys; print(" ".join(map(str, json.load(sys.stdin)["output_ids"])))')
version=$("$build/tools/indexcache" --version | cut -d' ' -f2)
if [[ $got != "$version $expected_ids" ]]; then
  echo "FAIL: the installed package gave '$got', expected '$version $expected_ids'" >&2
  exit 1
fi
echo "1 passed, 0 failed"
