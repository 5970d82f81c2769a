#!/bin/bash
# IndexCache's training-free layer search on the trained model: `indexcache search` (the C++ engine)
# greedily turns layers Shared, always the one whose change raises the calibration loss least, down to
# 2 Full layers; the patterns passed on the way at 4 and 2 Full layers (1/4 and 1/8 of 16) go to
# tools/train/searched_patterns.json, with the loss of every step.
#   bash tools/train/search_patterns.sh [INDEXCACHE_BINARY] [extra search flags]
# The calibration: the first SEARCH_CHARS characters of data/calibration.txt (default 12000, about
# 4 windows of 1024 tokens), sized so the 119 scored patterns take minutes on 16 CPU cores; with
# SEARCH_RETRIEVAL=FILE (e.g. data/retrieval_calibration.jsonl, tools/corpus/make_calibration_retrieval.py)
# also retrieval cases scored on their answers (--retrieval, weighted SEARCH_RETRIEVAL_WEIGHT, default 1).
set -euo pipefail
bin=${1:-build/tools/indexcache}
shift || true
model=models/glm-dsa-trained
calibration=$(mktemp --suffix=.txt)
python3 -c "import sys; t = open('data/calibration.txt', encoding='utf-8').read()[:int(sys.argv[1])]; \
print(t[:t.rfind(chr(10))])" "${SEARCH_CHARS:-12000}" > "$calibration"
log=$(mktemp)
# SEARCH_TIMEOUT (seconds) stops a search that runs long; the patterns reached by then are kept.
retrieval_flags=()
if [[ -n ${SEARCH_RETRIEVAL:-} ]]; then
  retrieval_flags=(--retrieval "$SEARCH_RETRIEVAL" --retrieval-weight "${SEARCH_RETRIEVAL_WEIGHT:-1}")
fi
timeout "${SEARCH_TIMEOUT:-0}" "$bin" search --model "$model" --calibration "$calibration" --keep 2 --context 1024 \
  "${retrieval_flags[@]}" "$@" \
  | tee "$log" || echo "search stopped early: keeping the patterns reached"
python3 - "$log" "$calibration" "${SEARCH_RETRIEVAL:-}" <<'PY'
import json, re, sys
steps = [dict(zip(("step", "shared", "loss", "delta", "pattern"), m.groups()))
         for m in re.finditer(r"step (\S+) shared (\S+) loss (\S+) delta (\S+) pattern ([FS]+)", open(sys.argv[1]).read())]
by_full = {s["pattern"].count("F"): s["pattern"] for s in steps}
n = len(steps[0]["pattern"]) if steps else 0
out = {"1/4": by_full.get(n // 4, ""), "1/8": by_full.get(n // 8, ""), "calibration_chars": len(open(sys.argv[2]).read()),
       "retrieval_cases": sys.argv[3], "steps": steps}
json.dump(out, open("tools/train/searched_patterns.json", "w"), indent=1)
print("searched patterns:", out["1/4"], out["1/8"])
PY
