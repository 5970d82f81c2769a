#!/usr/bin/env bash
# The CUDA backend's correctness checks, run on the GPU machine from the repository root:
#   tools/gpu/check_cuda.sh BUNDLE OUT
# BUNDLE holds bin/{cuda_op_check,cuda_op_trace_check,cuda_engine_check,cuda_graph_check,cuda_sampling_check,indexcache} and lib/ (made here by
# /work/shared/tools/device-bundle from a CUDA build); logs and GoogleTest JSON go to OUT.
# 1. cuda_op_check: every backend op against the CPU backend / float64 at bf16 bounds, near-ties detected.
# 2. cuda_op_trace_check: whole forward passes of three models (chunked prefill, two sequences, batched
#    decode), every op judged against the CPU backend on the inputs the GPU op read.
# 3. cuda_engine_check: --device cuda against the transformers goldens (patterns, chunked prefill,
#    batched decode), and a pass mixing an adaptive pattern's three patterns (exact invariants).
# 3b. cuda_graph_check: decode steps replayed as CUDA graphs against the same steps op by op (logits,
#    and greedy tokens through the engine with --cuda-graphs on and off, also with an adaptive pattern).
# 3c. cuda_sampling_check: Backend::SampleTokens against the host pipeline on random rows (boundary
#    draws detected), captured against eager, and seeded sampled generation on the bundled model.
# 3d. device_crc32_check and device_rows_check (when the bundle has them: builds with NCCL): the NCCL
#    handoff's device-memory path on one GPU.
# 4. indexcache generate --device cuda and --device cpu on the bundled model (greedy): both must run;
#    their tokens are printed beside transformers' (bf16 flips the random model's decisions, see
#    cuda_engine_check.cc, so equality is reported, not required).
# 5. Perplexity of the trained model on held-out text, --device cuda against --device cpu (below).
# 6. check_cluster.sh: cluster output (prefill worker → handoff → decode worker) against the in-process
#    engine, both on CUDA, over gRPC and TCP.
# Exits non-zero when any check fails.
set -uo pipefail
bundle=${1:?usage: check_cuda.sh BUNDLE OUT}
out=${2:?usage: check_cuda.sh BUNDLE OUT}
mkdir -p "$out"
export LD_LIBRARY_PATH="$bundle/lib:/usr/local/cuda-13.0/targets/x86_64-linux/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
failed=0
"$bundle/bin/cuda_op_check" --gtest_output="json:$out/cuda_op_check.json" 2>&1 | tee "$out/cuda_op_check.log" || failed=1
"$bundle/bin/cuda_op_trace_check" --gtest_output="json:$out/cuda_op_trace_check.json" 2>&1 | tee "$out/cuda_op_trace_check.log" || failed=1
"$bundle/bin/cuda_engine_check" --gtest_output="json:$out/cuda_engine_check.json" 2>&1 | tee "$out/cuda_engine_check.log" || failed=1
"$bundle/bin/cuda_graph_check" --gtest_output="json:$out/cuda_graph_check.json" 2>&1 | tee "$out/cuda_graph_check.log" || failed=1
"$bundle/bin/cuda_sampling_check" --gtest_output="json:$out/cuda_sampling_check.json" 2>&1 | tee "$out/cuda_sampling_check.log" || failed=1
# 3d. The NCCL handoff's device-memory path on this one GPU (builds with NCCL only): DeviceCrc32
#     against zlib, and device-staged rows against host-staged ones through export, CRC and import.
if [[ -x $bundle/bin/device_crc32_check ]]; then
  "$bundle/bin/device_crc32_check" 2>&1 | tee "$out/device_crc32_check.log" || failed=1
  "$bundle/bin/device_rows_check" --gtest_output="json:$out/device_rows_check.json" 2>&1 | tee "$out/device_rows_check.log" || failed=1
fi

ids=$(python3 -c "import json; print(json.dumps(json.load(open('tests/data/goldens/bundled/expected.json'))['greedy']['prompt_ids']))")
echo "$ids" > "$out/generate_prompt.json"
for device in cpu cuda; do
  "$bundle/bin/indexcache" generate --model models/glm-dsa-tiny-random --input-ids "$out/generate_prompt.json" \
    --max-new-tokens 12 --temperature 0 --ignore-eos --device "$device" --json > "$out/generate_$device.json" || failed=1
done
python3 - "$out" <<'PY' || failed=1
import json, sys
out = sys.argv[1]
cpu = json.load(open(f"{out}/generate_cpu.json"))["output_ids"]
cuda = json.load(open(f"{out}/generate_cuda.json"))["output_ids"]
want = json.load(open("tests/data/goldens/bundled/expected.json"))["greedy"]["output_ids"]
print(f"generate: cpu {cpu}\n          cuda {cuda}\n  transformers {want}")
print(f"generate: cpu equals transformers: {cpu == want}; cuda equals transformers: {cuda == want}")
sys.exit(0 if cpu == want and len(cuda) == len(want) else 1)
PY
# 5. Perplexity of the trained model (a real model: its decisions rarely sit at bf16 near-ties) on
#    20,000 characters of the held-out text, all-Full and with 1/4 of the indexers: CUDA must stay
#    within 1% of the CPU backend (which matches transformers' goldens). bf16 weights and matrix
#    inputs move each logit by about 2^-9 of its terms' magnitude, far below a 1% change in perplexity.
head -c 20000 data/test.txt > "$out/ppl_text.txt"
for freq in 1 4; do  # every layer's indexer (the checkpoint's all-Full pattern), then every 4th
  for device in cpu cuda; do
    "$bundle/bin/indexcache" perplexity --model models/glm-dsa-trained --text "$out/ppl_text.txt" --context 2048 \
      --index-freq "$freq" --device "$device" > "$out/ppl_${device}_freq$freq.txt" 2>&1 || failed=1
  done
  python3 - "$out" "$freq" <<'PY' || failed=1
import re, sys
out, freq = sys.argv[1], sys.argv[2]
ppl = {d: float(re.search(r"perplexity ([0-9.]+)", open(f"{out}/ppl_{d}_freq{freq}.txt").read()).group(1)) for d in ("cpu", "cuda")}
ratio = ppl["cuda"] / ppl["cpu"]
print(f"perplexity (trained, index-freq {freq}): cpu {ppl['cpu']:.4f} cuda {ppl['cuda']:.4f} ratio {ratio:.5f}")
sys.exit(0 if abs(ratio - 1) <= 0.01 else 1)
PY
done
# 6. Disaggregated serving on the GPU: a cluster's greedy tokens (bf16 rows handed off as the pools
#    store them, over gRPC and TCP) equal the in-process engine's on the same device.
tools/gpu/check_cluster.sh "$bundle" "$out" cuda "grpc tcp" || failed=1
echo "check_cuda: $([[ $failed == 0 ]] && echo PASSED || echo FAILED)"
exit $failed
