#!/usr/bin/env bash
# The paper's setting on one GPU, run on the GPU machine from the repository root:
#   bench/cuda/run_paper_shape.sh BUNDLE OUT [CONTEXTS] [KV_CACHE_GB]
# Writes the 47-layer GLM-4.7-Flash-shaped random model (bench/cuda/paper_shape_model.py), then runs
# bin/cuda_long_context_bench on it all-Full and with 1/4 of the indexers kept (--index-freq 4): at each
# context, prefill (8K chunks) with the indexer's share, decode tokens/s at batch 1 and at the largest
# batch a KV_CACHE_GB cache holds. Report: OUT/paper-<date>.{json,md}.
set -euo pipefail
bundle=${1:?usage: run_paper_shape.sh BUNDLE OUT [CONTEXTS] [KV_CACHE_GB]}
out=${2:?usage: run_paper_shape.sh BUNDLE OUT [CONTEXTS] [KV_CACHE_GB]}
contexts=${3:-32768,65536,131072,200000}
cache_gb=${4:-56}
export LD_LIBRARY_PATH="$bundle/lib:/usr/local/cuda-13.0/targets/x86_64-linux/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
mkdir -p "$out/raw"
model=$(mktemp -d)
python3 bench/cuda/paper_shape_model.py "$model"
for freq in 0 4; do
  "$bundle/bin/cuda_long_context_bench" --model "$model" --index-freq "$freq" --contexts "$contexts" \
    --chunk 8192 --kv-cache-gb "$cache_gb" --decode-steps 8 > "$out/raw/paper_freq$freq.json"
done
python3 - "$out" "$contexts" "$cache_gb" "$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)" <<'PY'
import datetime, json, sys
out, contexts, cache_gb, device = sys.argv[1:5]
full = json.load(open(f"{out}/raw/paper_freq0.json"))
quarter = json.load(open(f"{out}/raw/paper_freq4.json"))
date = datetime.datetime.now(datetime.timezone.utc)
command = f"bench/cuda/run_paper_shape.sh BUNDLE OUT {contexts} {cache_gb}"
stem = f"{out}/paper-{date:%Y%m%d-%H%M%S}"
json.dump({"date": date.isoformat(timespec="seconds"), "device": device, "command": command,
           "all_full": full, "freq4": quarter}, open(stem + ".json", "w"), indent=1)
md = [f"# Paper shape (47 layers, GLM-4.7-Flash-like, 8 experts) on {device}, {date.isoformat(timespec='seconds')}",
      "", f"Command: `{command}`", "",
      "| context | what | all-Full | 1/4 indexers (freq 4) | speedup | paper, H100, 200K |",
      "| --- | --- | --- | --- | --- | --- |"]
for a, b in zip(full["contexts"], quarter["contexts"]):
    n = a["context"]
    md.append(f"| {n} | prefill (s) | {a['prefill_ms'] / 1e3:.2f} | {b['prefill_ms'] / 1e3:.2f} | "
              f"{a['prefill_ms'] / b['prefill_ms']:.2f}× | 19.5 → 10.7 s (1.82×) |")
    md.append(f"| {n} | indexer share of prefill | {a['indexer_s'] * 1e3 / a['prefill_ms']:.0%} | "
              f"{b['indexer_s'] * 1e3 / b['prefill_ms']:.0%} | | |")
    md.append(f"| {n} | decode, batch 1 (tok/s) | {1e3 / a['decode_batch1_ms_per_step']:.1f} | "
              f"{1e3 / b['decode_batch1_ms_per_step']:.1f} | "
              f"{a['decode_batch1_ms_per_step'] / b['decode_batch1_ms_per_step']:.2f}× | 58 → 86 tok/s (1.48×) |")
    tps = [r["decode_max_batch"] * 1e3 / r["decode_max_batch_ms_per_step"] for r in (a, b)]
    md.append(f"| {n} | decode, largest batch (tok/s) | {tps[0]:.1f} (batch {a['decode_max_batch']}) | "
              f"{tps[1]:.1f} (batch {b['decode_max_batch']}) | {tps[1] / tps[0]:.2f}× | |")
open(stem + ".md", "w").write("\n".join(md) + "\n")
print("\n".join(md))
PY
