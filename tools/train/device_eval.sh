#!/bin/bash
# The evaluation call on the GPU machine (device tool), from the repository root, carrying
# .bundle/train.tar.xz (the `indexcache` binary and its Debian libraries, /work/shared/tools/device-bundle):
#   bash tools/train/device_eval.sh
# The layer search (C++ engine, the machine's 16 CPU cores), then side by side the quality table
# (GPU) and the transformers goldens of the trained model (CPU). Writes to $OUT: quality.{md,json},
# quality-topk-overlap.png, searched_patterns.json, goldens.tar (tests/data/goldens/trained,
# tests/data/tokenizer_golden_trained.json) and the logs.
set -uo pipefail
export PYTHONUNBUFFERED=1
mkdir -p /tmp/icb && tar -xJf .bundle/train.tar.xz -C /tmp/icb
export LD_LIBRARY_PATH=/tmp/icb/lib:/usr/local/cuda-13.0/targets/x86_64-linux/lib
status=0
SEARCH_TIMEOUT=${SEARCH_TIMEOUT:-240} bash tools/train/search_patterns.sh /tmp/icb/bin/indexcache --threads 16 \
  2>&1 | tee "$OUT/search.log" || status=$?
cp tools/train/searched_patterns.json "$OUT/" || true
python3 tools/make_goldens.py > "$OUT/goldens.log" 2>&1 &
goldens=$!
QUALITY_OUT=$OUT bash tools/train/quality_table.sh 2>&1 | tee "$OUT/eval.log" || status=$?
wait $goldens || status=$?
tail -5 "$OUT/goldens.log"
tar -cf "$OUT/goldens.tar" tests/data/goldens/trained tests/data/tokenizer_golden_trained.json || status=$?
exit $status
