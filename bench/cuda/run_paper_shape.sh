#!/usr/bin/env bash
# The paper's setting on one GPU, run on the GPU machine from the repository root:
#   bench/cuda/run_paper_shape.sh BUNDLE OUT [PREFILL_LENGTHS] [DECODE_CONTEXT]
# Writes the 47-layer GLM-4.7-Flash-shaped random model (bench/cuda/paper_shape_model.py), then times
# the engine on it all-Full and with 1/4 of the indexers kept (--index-freq 4): prefill (8K chunks)
# at each length and batch-1 decode at DECODE_CONTEXT. Report: OUT/paper-<date>.{json,md}.
set -euo pipefail
bundle=${1:?usage: run_paper_shape.sh BUNDLE OUT [PREFILL_LENGTHS] [DECODE_CONTEXT]}
out=${2:?usage: run_paper_shape.sh BUNDLE OUT [PREFILL_LENGTHS] [DECODE_CONTEXT]}
lengths=${3:-32768,65536}
context=${4:-65536}
export LD_LIBRARY_PATH="$bundle/lib:/usr/local/cuda-13.0/targets/x86_64-linux/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
mkdir -p "$out/raw"
model=$(mktemp -d)
python3 bench/cuda/paper_shape_model.py "$model"
for freq in 0 4; do
  "$bundle/bin/cuda_e2e_bench" --model "$model" --index-freq "$freq" --prefill "$lengths" --decode-context "$context" \
    --decode-steps 8 --reps 1 --chunk 8192 --kv-cache-gb 24 > "$out/raw/paper_freq$freq.json"
done
python3 - "$out" "$lengths" "$context" <<'PY'
import datetime, json, sys
out, lengths, context = sys.argv[1], sys.argv[2], sys.argv[3]
full = json.load(open(f"{out}/raw/paper_freq0.json"))
quarter = json.load(open(f"{out}/raw/paper_freq4.json"))
date = datetime.datetime.now(datetime.timezone.utc)
command = f"bench/cuda/run_paper_shape.sh BUNDLE OUT {lengths} {context}"
stem = f"{out}/paper-{date:%Y%m%d-%H%M%S}"
json.dump({"date": date.isoformat(timespec="seconds"), "command": command, "all_full": full, "freq4": quarter},
          open(stem + ".json", "w"), indent=1)
md = [f"# Paper shape (47 layers, GLM-4.7-Flash-like, 8 experts) — {date.isoformat(timespec='seconds')}", "",
      f"Command: `{command}`", "", "| what | all-Full | 1/4 indexers (freq 4) | speedup | paper at 200K |",
      "| --- | --- | --- | --- | --- |"]
for a, b in zip(full["prefill"], quarter["prefill"]):
    md.append(f"| prefill {a['tokens']} tokens (s) | {a['ms'] / 1e3:.2f} | {b['ms'] / 1e3:.2f} | "
              f"{a['ms'] / b['ms']:.2f}× | 19.5 → 10.7 s (1.82×) |")
a, b = full["decode"], quarter["decode"]
md.append(f"| decode at {a['context']}, batch 1 (tok/s) | {1e3 / a['ms_per_token']:.1f} | "
          f"{1e3 / b['ms_per_token']:.1f} | {a['ms_per_token'] / b['ms_per_token']:.2f}× | 58 → 86 tok/s (1.48×) |")
open(stem + ".md", "w").write("\n".join(md) + "\n")
print("\n".join(md))
PY
