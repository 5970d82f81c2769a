#!/usr/bin/env bash
# The CUDA benchmarks, run on the GPU machine from the repository root:
#   bench/cuda/run_cuda_bench.sh BUNDLE OUT [kernels|e2e|all]
# BUNDLE holds bin/{cuda_kernel_bench,cuda_e2e_bench} and lib/ (device-bundle of a CUDA build), and
# optionally bin/cuda_e2e_bench_base: the same benchmark built from an earlier commit, run on the same
# model as a baseline (its decode times appear beside ours in the report). Raw
# outputs go to OUT/raw; the report to OUT/cuda-<date>.{json,md} (commit it under bench/results/).
set -euo pipefail
bundle=${1:?usage: run_cuda_bench.sh BUNDLE OUT [kernels|e2e|all]}
out=${2:?usage: run_cuda_bench.sh BUNDLE OUT [kernels|e2e|all]}
what=${3:-all}
export LD_LIBRARY_PATH="$bundle/lib:/usr/local/cuda-13.0/targets/x86_64-linux/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PYTHONUNBUFFERED=1
raw="$out/raw"
mkdir -p "$raw"
if [[ $what == kernels || $what == all ]]; then
  "$bundle/bin/cuda_kernel_bench" > "$raw/kernels.json"
  python3 bench/cuda/torch_baselines.py > "$raw/torch.json"
fi
if [[ $what == e2e || $what == all ]]; then
  model=$(mktemp -d)
  python3 bench/cuda/e2e_transformers.py "$model" > "$raw/transformers.json"
  "$bundle/bin/cuda_e2e_bench" --model "$model" > "$raw/engine_full.json"
  "$bundle/bin/cuda_e2e_bench" --model "$model" --index-freq 4 > "$raw/engine_freq4.json"
  if [[ -x $bundle/bin/cuda_e2e_bench_base ]]; then
    "$bundle/bin/cuda_e2e_bench_base" --model "$model" --prefill 2048 > "$raw/engine_base_full.json"
    "$bundle/bin/cuda_e2e_bench_base" --model "$model" --prefill 2048 --index-freq 4 > "$raw/engine_base_freq4.json"
  fi
fi
python3 bench/cuda/make_report.py "$raw" "$out/cuda-$(date -u +%Y%m%d-%H%M%S)" "bench/cuda/run_cuda_bench.sh BUNDLE OUT $what"
