#!/usr/bin/python3
"""Trains the trained model's byte-level BPE tokenizer (4096 tokens) on the training corpus.

Reuses the bundled-model tokenizer trainer (tools/make_bundled_model.py): the same tokenizer.json
schema, which both our C++ tokenizer and HF `tokenizers` read, and the same special tokens
(<|endoftext|> = eos = 4094, <|begin|> = bos = 4095). Deterministic; standard library + numpy only:

    /usr/bin/python3 tools/train/train_tokenizer.py --corpus data/train/train.txt.xz --out data/train/tokenizer.json
"""

import argparse
import json
import lzma
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import make_bundled_model  # noqa: E402

VOCAB_SIZE = 4096
DOC_SEPARATOR = "<|endoftext|>"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default="data/train/train.txt.xz")
    parser.add_argument("--out", default="data/train/tokenizer.json")
    args = parser.parse_args()
    with lzma.open(args.corpus, "rt", encoding="utf-8") as f:
        texts = f.read().split(DOC_SEPARATOR)
    tokenizer = make_bundled_model.build_tokenizer(texts, VOCAB_SIZE)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(tokenizer, f, ensure_ascii=False, indent=2)
        f.write("\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
