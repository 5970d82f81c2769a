#!/bin/bash
# Regenerates docs/quality.md, docs/quality.json and docs/quality-topk-overlap.png: the quality of
# IndexCache patterns on the trained model. One command, from the repository root, on the GPU machine
# (torch, tokenizers, safetensors, matplotlib; the evaluation also runs on a CPU, slowly):
#
#   bash tools/train/quality_table.sh [INDEXCACHE_BINARY]
#
# 1. the greedy-searched 1/4 and 1/8 patterns: tools/train/search_patterns.sh with the given
#    `indexcache` binary (the C++ engine on the CPU cores), written to tools/train/searched_patterns.json;
#    without a binary, the patterns already in that file are used;
# 2. the distilled 1/4 checkpoint, assembled from models/glm-dsa-trained-distill-1of4;
# 3. tools/train/evaluate.py (PyTorch, float32) on all-Full, uniform 1/2, 1/4, 1/8 (layer 0 Full,
#    then every 2nd / 4th / 8th layer), searched 1/4 and 1/8, distilled 1/4;
# 4. tools/train/render_quality.py writes the markdown. QUALITY_OUT=DIR writes into DIR instead of docs/.
set -euo pipefail
export PYTHONUNBUFFERED=1
model=models/glm-dsa-trained
if [[ $# -ge 1 ]]; then
  bash tools/train/search_patterns.sh "$1"
fi
distilled=$(mktemp -d)
python3 tools/train/assemble_distilled.py --out "$distilled"
layers=$(python3 -c "import json; print(json.load(open('$model/config.json'))['num_hidden_layers'])")
uniform() { python3 -c "print(''.join('F' if i % $1 == 0 else 'S' for i in range($layers)))"; }
configs=("all-Full=$model:$(uniform 1)" "uniform 1/2=$model:$(uniform 2)" "uniform 1/4=$model:$(uniform 4)"
         "uniform 1/8=$model:$(uniform 8)")
if [[ -f tools/train/searched_patterns.json ]]; then
  for keep in 1/4 1/8; do
    p=$(python3 -c "import json; print(json.load(open('tools/train/searched_patterns.json')).get('$keep', ''))")
    if [[ -n "$p" ]]; then configs+=("searched $keep=$model:$p"); fi
  done
fi
configs+=("distilled 1/4=$distilled:$(python3 -c "import json; print(json.load(open('$distilled/config.json'))['index_topk_pattern'])")")
out=${QUALITY_OUT:-docs}
python3 tools/train/evaluate.py --out "$out/quality.json" --heatmap "$out/quality-topk-overlap.png" "${configs[@]}"
python3 tools/train/render_quality.py --results "$out/quality.json" --train-log tools/train/train_log.json \
  --out "$out/quality.md"
