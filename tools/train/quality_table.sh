#!/bin/bash
# Regenerates docs/quality.md and docs/quality-topk-overlap.png: the quality of IndexCache patterns on
# the trained model. One command, from the repository root, where torch + tokenizers + safetensors +
# matplotlib are installed (the GPU machine; on a CPU it works too, slowly):
#
#   bash tools/train/quality_table.sh
#
# Configurations: all-Full; uniform 1/2, 1/4, 1/8 (F then S…, layer 0 Full); the greedy-searched 1/4
# and 1/8 patterns of `indexcache search` (tools/train/searched_patterns.json, written by
# tools/train/search_patterns.sh on the CPU, since the search runs on our C++ engine); the distilled
# 1/4 checkpoint with its own pattern. Evaluation: tools/train/evaluate.py (PyTorch, float32).
set -euo pipefail
export PYTHONUNBUFFERED=1
model=models/glm-dsa-trained
distilled=models/glm-dsa-trained-distill-1of4
layers=$(python3 -c "import json; print(json.load(open('$model/config.json'))['num_hidden_layers'])")
uniform() { python3 -c "n=$layers; k=$1; print(''.join('F' if i % k == 0 else 'S' for i in range(n)))"; }
configs=("all-Full=$model:$(uniform 1)" "uniform 1/2=$model:$(uniform 2)" "uniform 1/4=$model:$(uniform 4)"
         "uniform 1/8=$model:$(uniform 8)")
if [[ -f tools/train/searched_patterns.json ]]; then
  for keep in 1/4 1/8; do
    p=$(python3 -c "import json; print(json.load(open('tools/train/searched_patterns.json')).get('$keep', ''))")
    [[ -n "$p" ]] && configs+=("searched $keep=$model:$p")
  done
fi
configs+=("distilled 1/4=$distilled:$(python3 -c "import json; print(json.load(open('$distilled/config.json'))['index_topk_pattern'])")")
out=${QUALITY_OUT:-docs}
python3 tools/train/evaluate.py --out "$out/quality.json" --heatmap "$out/quality-topk-overlap.png" "${configs[@]}"
python3 tools/train/render_quality.py --results "$out/quality.json" --train-log tools/train/train_log.json --out "$out/quality.md"
