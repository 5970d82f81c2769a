#!/usr/bin/python3
"""Retrieval cases for the layer search's calibration mix (`indexcache search --retrieval`).

The search scores these beside its calibration windows, on their answers' tokens, so that it does not
trade retrieval away for perplexity blindly (docs/quality.md). They must share nothing with what the
quality table evaluates: the filler is data/calibration.txt's (held out from training, and disjoint
from test.txt and from data/retrieval_test.jsonl's filler, which come from the test documents), and
the seed differs from the test cases'. Sized in tokens of the trained tokenizer like the test cases.

  /usr/bin/python3 tools/corpus/make_calibration_retrieval.py [--per-context N] [--out FILE]
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bpe_count  # noqa: E402
import retrieval  # noqa: E402

CONTEXTS = [256, 512, 1024]  # the search's windows are 1024 tokens at most (tools/train/search_patterns.sh)
SEED = 20261208  # not the test cases' seed


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calibration", default="data/calibration.txt")
    parser.add_argument("--tokenizer", default="models/glm-dsa-trained/tokenizer.json")
    parser.add_argument("--per-context", type=int, default=5, help="cases per task and context length")
    parser.add_argument("--out", default="data/retrieval_calibration.jsonl")
    args = parser.parse_args()
    with open(args.calibration, encoding="utf-8") as f:
        filler = retrieval.sentences(f.read())
    cases = retrieval.make_cases(filler, CONTEXTS, args.per_context, SEED, bpe_count.TokenCounter(args.tokenizer))
    with open(args.out, "w", encoding="utf-8") as f:
        for case in cases:
            f.write(json.dumps(case, ensure_ascii=False) + "\n")
    print(f"{args.out}: {len(cases)} cases from {len(filler)} filler sentences", file=sys.stderr)


if __name__ == "__main__":
    main()
