"""Token counts of the trained model's byte-level BPE tokenizer, standard library only.

The retrieval documents are sized in tokens of the model's tokenizer, and the corpus is built where HF
`tokenizers` is not installed (/usr/bin/python3 here). This applies a tokenizer.json's merges in rank
order to each pre-split word, with the pre-split expression the tokenizer was trained with
(tools/make_bundled_model.py TRAIN_SPLIT_RE, the GPT-2 split written for Python's `re`), so it counts
what HF `tokenizers` encodes for the English filler; the evaluation reports HF's own counts.
"""

import functools
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import make_bundled_model  # noqa: E402


class TokenCounter:
    def __init__(self, tokenizer_json):
        with open(tokenizer_json, encoding="utf-8") as f:
            model = json.load(f)["model"]
        self.ranks = {tuple(pair): rank for rank, pair in enumerate(model["merges"])}
        self.byte_chars = make_bundled_model.bytes_to_unicode()
        self.word_tokens = functools.lru_cache(maxsize=1 << 18)(self._word_tokens)

    def _word_tokens(self, word):
        symbols = [self.byte_chars[b] for b in word.encode("utf-8")]
        while len(symbols) > 1:
            pairs = [(self.ranks.get((symbols[i], symbols[i + 1]), 1 << 30), i) for i in range(len(symbols) - 1)]
            rank, i = min(pairs)
            if rank == 1 << 30:
                break
            symbols[i:i + 2] = [symbols[i] + symbols[i + 1]]
        return len(symbols)

    def __call__(self, text):
        return sum(self.word_tokens(w) for w in make_bundled_model.TRAIN_SPLIT_RE.findall(text))
