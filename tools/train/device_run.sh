#!/bin/bash
# The whole GPU-machine call (device tool), from the repository root, carrying data/train and
# .bundle/train.tar.xz (the `indexcache` binary and its Debian libraries, /work/shared/tools/device-bundle):
#   bash tools/train/device_run.sh [train.py flags]
# 1. tools/train/train.py: dense -> indexer warm-up -> sparse -> distillation, exports, transformers check;
# 2. as soon as the all-Full model is exported (while the GPU distills), on the CPU cores: the layer
#    search (tools/train/search_patterns.sh, `indexcache search`) and the transformers goldens
#    (tools/make_goldens.py), each on its own cores;
# 3. the quality table (tools/train/quality_table.sh, GPU) once the search and the training are done.
# The call has 10 minutes: the phases' budgets (train.py defaults) and timeouts counted from the start
# (the search stops by SEARCH_END s, keeping the patterns reached; the goldens by END s) keep it inside.
# Writes to $OUT: train.log, search.log, goldens.log, eval.log; results.tar (train_log.json,
# searched_patterns.json, quality.{md,json}, quality-topk-overlap.png, the distilled indexers,
# tests/data/goldens/trained, tests/data/tokenizer_golden_trained.json); model.tar.part-* (the all-Full
# model: cat model.tar.part-* | tar -x).
set -uo pipefail
export PYTHONUNBUFFERED=1
run=/tmp/train-run
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
mkdir -p /tmp/icb && tar -xJf .bundle/train.tar.xz -C /tmp/icb
export LD_LIBRARY_PATH=/tmp/icb/lib:/usr/local/cuda-13.0/targets/x86_64-linux/lib
status=0
python3 tools/train/train.py --data data/train --out "$run" "$@" >"$OUT/train.log" 2>&1 &
trainer=$!
while [[ ! -f $run/main-exported ]] && kill -0 $trainer 2>/dev/null; do sleep 1; done
if [[ ! -f $run/main-exported ]]; then
  wait $trainer
  tail -30 "$OUT/train.log"
  exit 1
fi
cp "$run/glm-dsa-trained/"* models/glm-dsa-trained/
taskset -c 10-15 timeout $((${END:-570} - SECONDS)) python3 tools/make_goldens.py >"$OUT/goldens.log" 2>&1 &
goldens=$!
SEARCH_TIMEOUT=$((${SEARCH_END:-480} - SECONDS)) SEARCH_CHARS=${SEARCH_CHARS:-5000} taskset -c 0-9 \
  bash tools/train/search_patterns.sh /tmp/icb/bin/indexcache --threads 10 >"$OUT/search.log" 2>&1 || status=$?
wait $trainer || status=$?
tail -12 "$OUT/train.log"
cp "$run/train_log.json" tools/train/train_log.json || status=1
python3 tools/train/assemble_distilled.py --extract-from "$run/glm-dsa-trained-distill-1of4" || status=1
QUALITY_OUT=docs bash tools/train/quality_table.sh >"$OUT/eval.log" 2>&1 || status=$?
tail -12 "$OUT/eval.log"
wait $goldens || status=$?
tail -3 "$OUT/goldens.log"
tar -cf "$OUT/results.tar" tools/train/train_log.json tools/train/searched_patterns.json docs/quality.md \
  docs/quality.json docs/quality-topk-overlap.png models/glm-dsa-trained-distill-1of4 \
  tests/data/goldens/trained tests/data/tokenizer_golden_trained.json || status=1
(cd "$run" && tar -cf - glm-dsa-trained) | split -b 15m - "$OUT/model.tar.part-" || status=1
exit $status
