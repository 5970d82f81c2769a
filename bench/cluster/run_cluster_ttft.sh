#!/usr/bin/env bash
# Issue 12's benchmark, one run on the GPU machine (one H100; no network needed), from the repository root:
#   bench/cluster/run_cluster_ttft.sh BUNDLE OUT [all|small|paper]
# Measures side by side: the loopback TCP and memcpy ceilings; for the 16-layer model of
# bench/cuda/e2e_transformers.py at 16K and the 47-layer paper shape (bench/cuda/paper_shape_model.py)
# at 64K and 128K, the engine's in-process prefill and the cluster's client-side time to first token
# (router + 1 prefill + 1 decode worker on the same GPU, --transport tcp, --max-batch-tokens 8192 for
# both) with prefill_s / handoff_s, the handoff's bytes from the workers' /metrics against the bf16
# rows expected, and the wire rate; then bursts of 16 x 16K and 64 x 4K on the 16-layer cluster.
# Writes OUT/cluster-ttft-<UTC date>.{json,md} (+ the engine child's raw JSON); commit the pair
# under bench/results/. `small` runs only the 16-layer part (cases and bursts), `paper` only the
# paper shape: the whole run is ~10 min on an H100, so a 10-minute command limit needs two calls.
#
# The bundle is made on the build machine from a CUDA build (bin/ and lib/, as run_paper_shape.sh's):
#   cmake -S . -B build-cuda -G Ninja -DCMAKE_BUILD_TYPE=Release
#   cmake --build build-cuda -j 2 --target indexcache indexcache_cluster_ttft_bench indexcache_loopback_tcp
#   /work/shared/tools/device-bundle .device-bundle build-cuda/tools/indexcache \
#     build-cuda/bench/cluster/indexcache_cluster_ttft_bench build-cuda/bench/cluster/indexcache_loopback_tcp
#   git rev-parse HEAD > .device-bundle/COMMIT
# and carried to the GPU machine (the device run's carry list: .device-bundle), where
#   bench/cluster/run_cluster_ttft.sh .device-bundle "$OUT"
#
# Environment (defaults in brackets): DEVICE [cuda]; CHUNK [8192]; TRANSPORT [tcp];
# MODEL_CACHE [/tmp/indexcache-cluster-ttft-models] where the generated models stay between calls;
# SMALL_MODEL / PAPER_MODEL: use this model directory instead of generating it;
# SMALL_CASES ["16384:5:3": three warm-ups: the first 16K prompts still speed up, 0.115, 0.100, 0.087 s in one run] and PAPER_CASES ["65536:3:1 131072:1:1"]: TOKENS:REPS:WARMUPS each;
# BURSTS ["16:16384 64:4096"]: COUNT:TOKENS each, on the 16-layer model; SMALL_KV_MB [4096] and
# PAPER_KV_MB [12288]: KV cache per engine / worker; TCP_GIB [4]; EXTRA: more driver flags (for
# instance EXTRA="--decode-arg --import-batch-mb=0" to import every chunk as it arrives).
# A CPU check of the whole path (tiny model, short prompts), on the build machine:
#   /work/shared/tools/device-bundle /tmp/cpu-bundle build/tools/indexcache build/bench/cluster/indexcache_cluster_ttft_bench
#   DEVICE=cpu SMALL_MODEL=models/glm-dsa-tiny-random SMALL_CASES="512:2:1" BURSTS="4:512 8:256" TCP_GIB=0.5 \
#     bench/cluster/run_cluster_ttft.sh /tmp/cpu-bundle /tmp/ttft-out small
set -euo pipefail
usage="usage: run_cluster_ttft.sh BUNDLE OUT [all|small|paper]"
bundle=$(cd "${1:?$usage}" && pwd)
out=${2:?$usage}
set_=${3:-all}
[[ $set_ == all || $set_ == small || $set_ == paper ]] || { echo "$usage" >&2; exit 2; }
device=${DEVICE:-cuda}
chunk=${CHUNK:-8192}
transport=${TRANSPORT:-tcp}
cache=${MODEL_CACHE:-/tmp/indexcache-cluster-ttft-models}
small_cases=${SMALL_CASES:-16384:5:3}
paper_cases=${PAPER_CASES:-65536:3:1 131072:1:1}
bursts=${BURSTS:-16:16384 64:4096}
small_kv=${SMALL_KV_MB:-4096}
paper_kv=${PAPER_KV_MB:-12288}
tcp_gib=${TCP_GIB:-4}
export LD_LIBRARY_PATH="$bundle/lib:/usr/local/cuda-13.0/targets/x86_64-linux/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export INDEXCACHE_LOG_LEVEL=${INDEXCACHE_LOG_LEVEL:-warning}
mkdir -p "$out" "$cache"

source bench/cluster/bench_models.sh

args=(--indexcache "$bundle/bin/indexcache" --device "$device" --max-batch-tokens "$chunk" --transport "$transport"
      --tcp-gib "$tcp_gib")
if [[ $set_ != paper ]]; then
  small=${SMALL_MODEL:-$(small_model)}
  args+=(--model "e2e-16layer=$small" --kv-cache-mb "e2e-16layer=$small_kv")
  for c in $small_cases; do args+=(--case "e2e-16layer:$c"); done
  for b in $bursts; do args+=(--burst "e2e-16layer:$b"); done
fi
if [[ $set_ != small ]]; then
  paper=${PAPER_MODEL:-$(paper_model)}
  args+=(--model "paper-47layer=$paper" --kv-cache-mb "paper-47layer=$paper_kv")
  for c in $paper_cases; do args+=(--case "paper-47layer:$c"); done
fi

if command -v nvidia-smi >/dev/null && [[ $device == cuda ]]; then
  device_name=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
else
  device_name=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')
fi
commit=$(cat "$bundle/COMMIT" 2>/dev/null || git rev-parse HEAD 2>/dev/null || echo unknown)
command="DEVICE=$device CHUNK=$chunk TRANSPORT=$transport SMALL_CASES='$small_cases' PAPER_CASES='$paper_cases'"
command+=" BURSTS='$bursts' SMALL_KV_MB=$small_kv PAPER_KV_MB=$paper_kv TCP_GIB=$tcp_gib"
command+=" bench/cluster/run_cluster_ttft.sh BUNDLE OUT $set_"
stem="$out/cluster-ttft-$(date -u +%Y%m%d-%H%M%S)"
"$bundle/bin/indexcache_cluster_ttft_bench" "${args[@]}" --device-name "$device_name" --git-commit "$commit" \
  --command "$command" --json "$stem.json" --markdown "$stem.md" ${EXTRA:-}
echo "wrote $stem.json and $stem.md"
