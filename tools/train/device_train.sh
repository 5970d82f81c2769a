#!/bin/bash
# The training call on the GPU machine (device tool), from the repository root, data/train carried:
#   bash tools/train/device_train.sh
# Writes to $OUT: train.log, train_log.json (summary + loss curve) and the two exported models as a tar
# cut in 15 MB parts (the tool returns files of at most 16 MB): cat models.tar.part-* | tar -x
set -uo pipefail
export PYTHONUNBUFFERED=1
run=/tmp/train-run
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
status=0
python3 tools/train/train.py --data data/train --out "$run" "$@" 2>&1 | tee "$OUT/train.log" || status=$?
# Whatever was written comes back, also when a late step (the transformers check) failed.
cp "$run/train_log.json" "$OUT/" || true
(cd "$run" && tar -cf - glm-dsa-trained*) | split -b 15m - "$OUT/models.tar.part-" || true
exit $status
