#!/usr/bin/env bash
# models/glm-dsa-trained-distill-1of4 loads as the repository ships it (an index over its distilled
# indexers and, through a symlink, the base model), and computes exactly what the complete checkpoint
# that tools/train/assemble_distilled.py --out writes computes: the same logits and top-k selections,
# byte for byte, for a prompt longer than index_topk.
#   distilled_checkpoint_test.sh INDEXCACHE_BINARY SOURCE_DIR
set -euo pipefail
indexcache=$1
src=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$src"
/usr/bin/python3 tools/train/assemble_distilled.py --out "$work/assembled" >/dev/null
python3 -c 'import json; print(json.dumps([(7 * i + 11) % 4000 + 5 for i in range(300)]))' >"$work/ids.json"
for model in "$src/models/glm-dsa-trained-distill-1of4" "$work/assembled"; do
  "$indexcache" score --model "$model" --input-ids "$work/ids.json" --threads 2 --output "$work/$(basename "$model").safetensors" \
    2>"$work/score.log" || { cat "$work/score.log" >&2; echo "FAIL: scoring with $model" >&2; exit 1; }
done
if ! cmp "$work/glm-dsa-trained-distill-1of4.safetensors" "$work/assembled.safetensors"; then
  echo "FAIL: the shipped checkpoint's logits or selections differ from the assembled one's" >&2
  exit 1
fi
echo "1 passed, 0 failed"
