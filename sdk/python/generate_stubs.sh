#!/usr/bin/env bash
# Generates the Python messages and gRPC stubs of the public API (generate_pb2.py,
# generate_pb2_grpc.py) into OUT_DIR with protoc and grpc_python_plugin — both from Debian's
# protobuf-compiler(-grpc), so neither pip nor grpcio-tools is needed. The gRPC stub imports its
# messages as `indexcache.v1.generate_pb2`; that import is rewritten to a relative one so the stubs
# live inside the indexcache_client package.
#   sdk/python/generate_stubs.sh sdk/python/indexcache_client     # in place, without CMake
# CMake runs it at build time into <build>/sdk/python/indexcache_client (see CMakeLists.txt).
set -euo pipefail

out=${1:?usage: generate_stubs.sh OUT_DIR}
here=$(cd "$(dirname "$0")" && pwd)
proto_root=${PROTO_ROOT:-$here/../../proto}
protoc=${PROTOC:-protoc}
plugin=${GRPC_PYTHON_PLUGIN:-$(command -v grpc_python_plugin || true)}
if [[ -z $plugin ]]; then
  echo "generate_stubs: grpc_python_plugin not found (apt-get install protobuf-compiler-grpc)" >&2
  exit 1
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$protoc" --proto_path="$proto_root" --python_out="$tmp" --grpc_python_out="$tmp" \
  --plugin=protoc-gen-grpc_python="$plugin" indexcache/v1/generate.proto

mkdir -p "$out"
cp "$tmp/indexcache/v1/generate_pb2.py" "$out/generate_pb2.py"
sed 's/^from indexcache\.v1 import generate_pb2 as /from . import generate_pb2 as /' \
  "$tmp/indexcache/v1/generate_pb2_grpc.py" >"$out/generate_pb2_grpc.py"
if ! grep -q '^from \. import generate_pb2 as ' "$out/generate_pb2_grpc.py"; then
  echo "generate_stubs: the gRPC stub's import of generate_pb2 was not where expected" >&2
  exit 1
fi
