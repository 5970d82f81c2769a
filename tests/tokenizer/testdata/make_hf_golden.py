#!/usr/bin/env python3
"""Makes the tokenizer fixtures of tests/tokenizer: small byte-level BPE tokenizers trained with
Hugging Face `tokenizers`, and the ids HF encodes a set of tricky texts to (the independent truth
tokenizer_golden_test.cc compares the C++ tokenizer against).

Three layouts:
  glm_style  - Sequence[Split(Llama-3/GLM regex, Isolated), ByteLevel(use_regex=False)],
               ignore_merges, special tokens, a non-special added token with lstrip/rstrip.
  gpt2_style - ByteLevel(add_prefix_space=True, use_regex=True) (HF decode then keeps the space).
  splits     - several Split behaviours (MergedWithPrevious/Next, Contiguous, Removed, invert,
               a String pattern) before a ByteLevel with the GPT-2 regex.

The texts are hand-picked edge cases, the training sentences, and seeded random mixes of
whitespace kinds, letters, digits, apostrophes and punctuation.

Run where `tokenizers` is installed:  python3 make_hf_golden.py OUT_DIR
Writes OUT_DIR/<layout>_tokenizer.json and OUT_DIR/<layout>_golden.json, the latter as
{"tokenizer": "tests/tokenizer/testdata/<layout>_tokenizer.json", "cases": [{"text", "ids",
"decoded" (only when HF's decode differs from text)}]}.
"""
import json
import os
import random
import sys

import tokenizers
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
          r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "It's a truth universally acknowledged, that a single man in possession of a good fortune,"
    " must be in want of a wife.",
    "We'll see; they've said they'd come, but I'm not sure they're READY.",
    "def encode(self, text: str) -> list[int]:\n    return [ord(c) for c in text]  # naive\n",
    "for (int i = 0; i < n; ++i) {\n\tsum += a[i] * b[i];\n}\n",
    "Prices rose 12.5% to $1,234,567.89 in 2024 — up from 987 in 1999.",
    "Café, naïve, façade, résumé, Ærøskøbing, Straße, İstanbul.",
    "東京は日本の首都です。北京是中国的首都。",
    "서울은 한국의 수도입니다. Москва — столица России. Αθήνα.",
    "مرحبا بالعالم. नमस्ते दुनिया। שלום עולם.",
    "Emoji: 😀😃😄 👍🏽 👨‍👩‍👧‍👦 🇫🇷 ❤️ ✨",
    "Line one\nLine two\r\nLine three\n\n\nEnd   with spaces   \n",
    "<html><body class=\"x\">Hello, <b>world</b>!</body></html>",
    "Mathematics: ∀x ∈ ℝ, x² ≥ 0; ∑ᵢ aᵢ = ∫ f(x) dx ≈ 3.14159…",
]

TEXTS = [
    "", " ", "  ", "\n", "\t", "hello", " hello", "  hello", "hello ", "hello  ", "hello   world",
    "a   b", "a \n b", "a\n\nb", "a \t\n\t b", "x\r\ny", "\n\n\nz", "   ", "tail \n",
    "I'M HERE, it's you'RE we'Ve they'LL i'D", "'s's'S", "don't", "'ſ 'K", "He said 'hello'.",
    "12345 1234567 12 1 0.5 3,141,592", "x1y22z333", "٣٤٥ ²³ ½ Ⅻ",
    "Café naïve façade", "e\u0301e\u0301 combining", "日本語のテキスト", "中文 和 English 混合",
    "😀 😃😄 👍🏽 👨‍👩‍👧‍👦", "🇫🇷🇩🇪", "a\u00a0b\u00a0\u00a0c", "x\u3000\u3000y z",
    "p\u2028q\u2029r", "s\x0bt\x0c u", "v\x85w", "\u200b zero width", "tab\tseparated\tvalues",
    "<|endoftext|>", "a<|endoftext|>b", "<|endoftext|><|endoftext|>", "x <|user|> y",
    "<|user|>\nHi<|assistant|>\nHello<|endoftext|>", "<|endoftext", "<|user|<|user|>",
    "call <tool> now", "call<tool>now", "  <tool>  ", "[gMASK]<sop>text",
    "--x--y-- 1,2;3 a-b", "#### Title\n\n* item -- more;;", "end\n",
] + SENTENCES

# Pieces that stress the split regexes' whitespace, case and digit rules when shuffled together.
FUZZ_ALPHABET = [" ", "  ", "\t", "\n", "\r", "\r\n", "\u00a0", "\u3000", "\x0b", "\u2028", "a",
                 "Zq", "\u00e9", "\u4e2d", "\u0663", "1", "23", "4567", "'", "'s", "'S", "'ll", "!",
                 ".", "-", ",", ";", "\U0001F600", "\u0301", "#", "*", "<|endoftext|>", "<tool>"]


def fuzz_texts(count=150):
    rng = random.Random(99)
    return ["".join(rng.choice(FUZZ_ALPHABET) for _ in range(rng.randint(1, 12)))
            for _ in range(count)]


def corpus():
    rng = random.Random(1234)
    lines = []
    for _ in range(400):
        lines.append(" ".join(rng.choice(SENTENCES) for _ in range(3)))
    return lines


def train(pre_tokenizer, specials, vocab_size):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(corpus(), trainer=trainer)
    return tok


def layouts():
    specials = ["<|endoftext|>", "<|user|>", "<|assistant|>", "[gMASK]", "<sop>"]
    glm = train(pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]), specials, 1500)
    spec = json.loads(glm.to_str())
    spec["model"]["ignore_merges"] = True
    glm = Tokenizer.from_str(json.dumps(spec))
    glm.add_tokens([AddedToken("<tool>", lstrip=True, rstrip=True, normalized=True, special=False)])

    gpt2 = train(pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True),
                 ["<|endoftext|>"], 1200)

    splits = train(pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\d"), behavior="contiguous"),
        pre_tokenizers.Split("-", behavior="merged_with_next"),
        pre_tokenizers.Split(Regex("[,;]"), behavior="merged_with_previous"),
        pre_tokenizers.Split(Regex(r"#+"), behavior="removed"),
        pre_tokenizers.Split(Regex(r"[^*]+"), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]), ["<|endoftext|>"], 900)
    return {"glm_style": glm, "gpt2_style": gpt2, "splits": splits}


def main():
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)
    for name, tok in layouts().items():
        path = os.path.join(out_dir, f"{name}_tokenizer.json")
        tok.save(path)
        tok = Tokenizer.from_file(path)  # encode with exactly what was written
        cases = []
        for text in TEXTS + fuzz_texts():
            ids = tok.encode(text, add_special_tokens=False).ids
            case = {"text": text, "ids": ids}
            decoded = tok.decode(ids, skip_special_tokens=False)
            if decoded != text:
                case["decoded"] = decoded
            cases.append(case)
        golden = {"tokenizer": f"tests/tokenizer/testdata/{name}_tokenizer.json",
                  "hf_tokenizers_version": tokenizers.__version__, "cases": cases}
        with open(os.path.join(out_dir, f"{name}_golden.json"), "w", encoding="utf-8") as f:
            json.dump(golden, f, ensure_ascii=False, indent=1)
        print(name, len(tok.get_vocab()), "tokens,", len(cases), "cases")


if __name__ == "__main__":
    main()
