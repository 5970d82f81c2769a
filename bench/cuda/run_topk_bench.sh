#!/usr/bin/env bash
# The radix top-k alone beside torch.topk, run on the GPU machine from the repository root:
#   bench/cuda/run_topk_bench.sh BUNDLE OUT
# BUNDLE holds bin/cuda_kernel_bench and lib/ (device-bundle of a CUDA build). Raw outputs go to
# OUT/raw; the report to OUT/topk-<date>.{json,md} (commit it under bench/results/).
set -euo pipefail
bundle=${1:?usage: run_topk_bench.sh BUNDLE OUT}
out=${2:?usage: run_topk_bench.sh BUNDLE OUT}
export LD_LIBRARY_PATH="$bundle/lib:/usr/local/cuda-13.0/targets/x86_64-linux/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PYTHONUNBUFFERED=1
raw="$out/raw"
mkdir -p "$raw"
"$bundle/bin/cuda_kernel_bench" --topk-only > "$raw/topk.json"
python3 bench/cuda/torch_baselines.py --topk-only > "$raw/torch.json"
python3 bench/cuda/topk_report.py "$raw" "$out/topk-$(date -u +%Y%m%d-%H%M%S)" "bench/cuda/run_topk_bench.sh BUNDLE OUT"
