#!/usr/bin/python3
"""Writes the bundled test model models/glm-dsa-tiny-random/.

A tiny `glm_moe_dsa` (GLM-5 architecture) checkpoint with random weights, for tests and demos that
must run without downloads: its output is gibberish, but every code path runs (MLA, DSA indexer,
dense MLP, MoE with shared expert, byte-level BPE tokenizer).

Needs only the Python standard library and numpy; deterministic (fixed seeds, sorted inputs), so a
re-run writes byte-identical files:

    /usr/bin/python3 tools/make_bundled_model.py --out models/glm-dsa-tiny-random

Files written:
  tokenizer.json     HF `tokenizers` format, byte-level BPE trained here on /usr/share/common-licenses/
  config.json        model_type glm_moe_dsa, no IndexCache keys (every layer Full)
  model.safetensors  BF16 (e_score_correction_bias F32), HF tensor names, per-expert hub layout
  README.md          what it is, how it was made, sha256 of the other three files
"""

import argparse
import collections
import hashlib
import heapq
import json
import os
import re
import struct
import zlib

import numpy as np

CORPUS_DIR = "/usr/share/common-licenses"
VOCAB_SIZE = 2048
SPECIAL_TOKENS = ["<|endoftext|>", "<|begin|>"]  # ids VOCAB_SIZE-2 (eos), VOCAB_SIZE-1 (bos)
EOS_ID = VOCAB_SIZE - 2
BOS_ID = VOCAB_SIZE - 1
SEED = 20260311

# The pre-split regex of the GPT-2 ByteLevel pre-tokenizer, which tokenizer.json selects with
# `"use_regex": true` (the pattern itself is implied, not stored):
#   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
# Python's `re` has no \p{..}; this approximation only shapes which merges are learned here. Encoding
# (the HF library, the C++ tokenizer) always uses the exact pattern above.
#   \p{L}            ~ [^\W\d_]        (alphanumerics minus decimal digits and underscore)
#   \p{N}            ~ \d              (decimal digits only)
#   [^\s\p{L}\p{N}]  ~ (?:[^\s\w]|_)   (\w contains "_", which is punctuation here)
TRAIN_SPLIT_RE = re.compile(
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+"""
)

CONFIG = {
    "architectures": ["GlmMoeDsaForCausalLM"],
    "model_type": "glm_moe_dsa",
    "vocab_size": VOCAB_SIZE,
    "hidden_size": 256,
    "num_hidden_layers": 8,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "q_lora_rank": 128,
    "kv_lora_rank": 64,
    "qk_nope_head_dim": 32,
    "qk_rope_head_dim": 16,
    "v_head_dim": 32,
    "intermediate_size": 512,
    "moe_intermediate_size": 128,
    "n_routed_experts": 8,
    "num_experts_per_tok": 2,
    "n_shared_experts": 1,
    "n_group": 1,
    "topk_group": 1,
    "norm_topk_prob": True,
    "routed_scaling_factor": 2.5,
    "first_k_dense_replace": 1,
    # 16 (not 4) indexer heads: a key's score is exactly 0 when every head's ReLU clips it, which
    # with 4 heads happens to 1 key in 16 and puts exact ties at the top-k boundary in ~5% of rows,
    # so the reference's selection would depend on torch.topk's tie order. 16 heads make it ~1e-5.
    "index_n_heads": 16,
    "index_head_dim": 32,
    "index_topk": 64,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-05,
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
    "max_position_embeddings": 8192,
    "attention_bias": False,
    "attention_dropout": 0.0,
    "initializer_range": 0.02,
    "tie_word_embeddings": False,
    "use_cache": True,
    "bos_token_id": BOS_ID,
    "eos_token_id": EOS_ID,
    "pad_token_id": None,
    "dtype": "bfloat16",
    "torch_dtype": "bfloat16",
}


# ----------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------


def bytes_to_unicode():
    """GPT-2's reversible byte -> printable unicode character map (index = byte value)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    mapping = {}
    extra = 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return [mapping[b] for b in range(256)]


def read_corpus():
    """Regular files of CORPUS_DIR (symlinks skipped: they duplicate files), sorted by name."""
    texts = []
    names = []
    for name in sorted(os.listdir(CORPUS_DIR)):
        path = os.path.join(CORPUS_DIR, name)
        if os.path.islink(path) or not os.path.isfile(path):
            continue
        with open(path, "rb") as f:
            texts.append(f.read().decode("utf-8", errors="replace"))
        names.append(name)
    if not texts:
        raise SystemExit(f"error: no corpus files in {CORPUS_DIR}")
    return names, texts


def count_words(texts, byte_chars):
    """Pre-split words -> frequency, each word as a tuple of byte-level symbols."""
    counts = collections.Counter()
    for text in texts:
        counts.update(TRAIN_SPLIT_RE.findall(text))
    words = {}
    for word, n in counts.items():
        symbols = tuple(byte_chars[b] for b in word.encode("utf-8"))
        words[symbols] = words.get(symbols, 0) + n
    return sorted(words.items())  # deterministic order


def word_pairs(symbols):
    return [(symbols[i], symbols[i + 1]) for i in range(len(symbols) - 1)]


def train_bpe(words, n_tokens_wanted, vocab):
    """Greedy BPE: repeatedly merge the most frequent adjacent pair (ties: smallest pair).

    `vocab` (token -> id) is extended in place until it holds `n_tokens_wanted` tokens.
    Returns the merges in learned order. Pair counts are updated incrementally (only words
    containing the merged pair are revisited), which keeps this to a few seconds.
    """
    symbols = [list(w) for w, _ in words]
    freqs = [n for _, n in words]
    pair_count = collections.defaultdict(int)
    pair_words = collections.defaultdict(set)
    for wi, syms in enumerate(symbols):
        for p in word_pairs(syms):
            pair_count[p] += freqs[wi]
            pair_words[p].add(wi)
    heap = [(-c, p) for p, c in pair_count.items()]
    heapq.heapify(heap)

    merges = []
    while len(vocab) < n_tokens_wanted:
        if not heap:
            raise SystemExit("error: corpus exhausted before the vocabulary was full")
        neg, pair = heapq.heappop(heap)
        if pair_count.get(pair, 0) != -neg or -neg <= 0:
            continue  # stale heap entry
        merged = pair[0] + pair[1]
        merges.append(pair)
        if merged not in vocab:
            vocab[merged] = len(vocab)
        touched = set()
        for wi in sorted(pair_words[pair]):
            old = symbols[wi]
            for p in word_pairs(old):
                pair_count[p] -= freqs[wi]
                touched.add(p)
            new = []
            i = 0
            while i < len(old):
                if i + 1 < len(old) and old[i] == pair[0] and old[i + 1] == pair[1]:
                    new.append(merged)
                    i += 2
                else:
                    new.append(old[i])
                    i += 1
            symbols[wi] = new
            for p in word_pairs(new):
                pair_count[p] += freqs[wi]
                pair_words[p].add(wi)
                touched.add(p)
        del pair_words[pair]
        pair_count.pop(pair, None)
        for p in sorted(touched):
            c = pair_count.get(p, 0)
            if c > 0:
                heapq.heappush(heap, (-c, p))
            else:
                pair_count.pop(p, None)
    return merges


def build_tokenizer(texts, vocab_size):
    """tokenizer.json (as a dict) of a byte-level BPE with vocab_size tokens trained on `texts`.

    The last two ids are the special tokens <|endoftext|> (eos, vocab_size-2) and <|begin|> (bos).
    """
    byte_chars = bytes_to_unicode()
    words = count_words(texts, byte_chars)
    vocab = {c: i for i, c in enumerate(byte_chars)}  # id == byte value
    merges = train_bpe(words, vocab_size - len(SPECIAL_TOKENS), vocab)
    for tok in SPECIAL_TOKENS:  # also in the model vocab, as GPT-2's <|endoftext|> is
        vocab[tok] = len(vocab)
    assert len(vocab) == vocab_size and vocab["<|endoftext|>"] == vocab_size - 2 and vocab["<|begin|>"] == vocab_size - 1
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": vocab[tok],
                "content": tok,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
            for tok in SPECIAL_TOKENS
        ],
        "normalizer": None,
        "pre_tokenizer": dict(byte_level),
        "post_processor": None,
        "decoder": dict(byte_level),
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": [[a, b] for a, b in merges],
        },
    }
    print(f"tokenizer: {len(words)} distinct words, {len(merges)} merges, vocab {len(vocab)}")
    return tokenizer


# ----------------------------------------------------------------------------------------------
# Weights
# ----------------------------------------------------------------------------------------------


def tensor_specs(cfg):
    """(name, shape, init) for every tensor of the checkpoint, in HF naming.

    init is ("normal", std) | ("ones_noise", std) | ("noise", std). Linear weights are [out, in].
    """
    h = cfg["hidden_size"]
    n_heads = cfg["num_attention_heads"]
    qk_head = cfg["qk_nope_head_dim"] + cfg["qk_rope_head_dim"]
    e = cfg["n_routed_experts"]
    moe_i = cfg["moe_intermediate_size"]
    shared_i = moe_i * cfg["n_shared_experts"]

    def linear(name, out_f, in_f, gain=1.0):
        return (name, [out_f, in_f], ("normal", gain / np.sqrt(in_f)))

    specs = [
        ("model.embed_tokens.weight", [cfg["vocab_size"], h], ("normal", 1.0)),
        ("model.norm.weight", [h], ("ones_noise", 0.05)),
        # Gain 3 spreads the logits (std ~3) so greedy argmax has clear margins.
        linear("lm_head.weight", cfg["vocab_size"], h, gain=3.0),
    ]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        a = p + "self_attn."
        x = a + "indexer."
        specs += [
            (p + "input_layernorm.weight", [h], ("ones_noise", 0.05)),
            (p + "post_attention_layernorm.weight", [h], ("ones_noise", 0.05)),
            linear(a + "q_a_proj.weight", cfg["q_lora_rank"], h),
            (a + "q_a_layernorm.weight", [cfg["q_lora_rank"]], ("ones_noise", 0.05)),
            linear(a + "q_b_proj.weight", n_heads * qk_head, cfg["q_lora_rank"]),
            linear(a + "kv_a_proj_with_mqa.weight", cfg["kv_lora_rank"] + cfg["qk_rope_head_dim"], h),
            (a + "kv_a_layernorm.weight", [cfg["kv_lora_rank"]], ("ones_noise", 0.05)),
            linear(a + "kv_b_proj.weight", n_heads * (cfg["qk_nope_head_dim"] + cfg["v_head_dim"]),
                   cfg["kv_lora_rank"]),
            linear(a + "o_proj.weight", h, n_heads * cfg["v_head_dim"]),
            linear(x + "wq_b.weight", cfg["index_n_heads"] * cfg["index_head_dim"], cfg["q_lora_rank"]),
            linear(x + "wk.weight", cfg["index_head_dim"], h),
            (x + "k_norm.weight", [cfg["index_head_dim"]], ("ones_noise", 0.05)),
            (x + "k_norm.bias", [cfg["index_head_dim"]], ("noise", 0.05)),
            linear(x + "weights_proj.weight", cfg["index_n_heads"], h),
        ]
        m = p + "mlp."
        if i < cfg["first_k_dense_replace"]:
            specs += [
                linear(m + "gate_proj.weight", cfg["intermediate_size"], h),
                linear(m + "up_proj.weight", cfg["intermediate_size"], h),
                linear(m + "down_proj.weight", h, cfg["intermediate_size"]),
            ]
            continue
        specs += [
            linear(m + "gate.weight", e, h),
            (m + "gate.e_score_correction_bias", [e], ("noise", 0.05)),
        ]
        for j in range(e):
            specs += [
                linear(f"{m}experts.{j}.gate_proj.weight", moe_i, h),
                linear(f"{m}experts.{j}.up_proj.weight", moe_i, h),
                linear(f"{m}experts.{j}.down_proj.weight", h, moe_i),
            ]
        specs += [
            linear(m + "shared_experts.gate_proj.weight", shared_i, h),
            linear(m + "shared_experts.up_proj.weight", shared_i, h),
            linear(m + "shared_experts.down_proj.weight", h, shared_i),
        ]
    return specs


def make_tensor(name, shape, init):
    """float32 values from a generator seeded by (SEED, crc32(name)): independent of tensor order."""
    rng = np.random.default_rng([SEED, zlib.crc32(name.encode())])
    kind, std = init
    values = rng.standard_normal(shape, dtype=np.float32) * np.float32(std)
    if kind == "ones_noise":
        values += np.float32(1.0)
    return values


def to_bf16_bytes(values):
    """float32 -> bfloat16 bit patterns, round to nearest even (inputs are finite)."""
    bits = np.ascontiguousarray(values, dtype="<f4").view("<u4").astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded.astype("<u2").tobytes()


def write_safetensors(path, tensors):
    """tensors: list of (name, dtype str, shape, raw little-endian bytes). Header keys sorted."""
    header = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, dtype, shape, data in sorted(tensors, key=lambda t: t[0]):
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for _, _, _, data in sorted(tensors, key=lambda t: t[0]):
            f.write(data)


def build_weights(cfg):
    tensors = []
    n_params = 0
    for name, shape, init in tensor_specs(cfg):
        values = make_tensor(name, shape, init)
        n_params += values.size
        if name.endswith("e_score_correction_bias"):  # transformers keeps it float32
            tensors.append((name, "F32", shape, values.astype("<f4").tobytes()))
        else:
            tensors.append((name, "BF16", shape, to_bf16_bytes(values)))
    print(f"weights: {len(tensors)} tensors, {n_params} parameters")
    return tensors


# ----------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------


def sha256_of(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


README_TEMPLATE = """# glm-dsa-tiny-random

A tiny `glm_moe_dsa` (GLM-5 architecture, `GlmMoeDsaForCausalLM`) checkpoint with **random
weights**. Its output is gibberish; it exists so that tests, demos and CI exercise every code path
(MLA attention, DSA lightning indexer with top-k, dense MLP, MoE with sigmoid routing, correction
bias and a shared expert, byte-level BPE tokenizer) without downloading anything.

- {n_layers} layers (layer 0 dense MLP, layers 1-{last} MoE: {n_experts} experts, top-{top_k}, 1 shared),
  hidden {hidden}, {n_heads} heads, q_lora {q_lora}, kv_lora {kv_lora}, nope/rope/v {nope}/{rope}/{v},
  indexer {ix_heads} heads x {ix_dim}, index_topk {topk}, vocab {vocab}.
- {ix_heads} indexer heads rather than a smaller number: an indexer score is exactly 0 when every
  head's ReLU clips it, and with few heads such exact ties land on the top-k boundary often enough
  to make the reference's selection depend on torch.topk's tie order.
- No IndexCache keys in config.json: every layer is Full. Choose a pattern at load time
  (`--index-freq` / `--index-pattern`).
- Weights BF16 (`mlp.gate.e_score_correction_bias` F32, as transformers keeps it), tensor names as in
  Hugging Face checkpoints of this architecture, routed experts in the per-expert hub layout
  (`mlp.experts.{{e}}.{{gate,up,down}}_proj.weight`). Init: normal with std 1/sqrt(fan_in) (embedding
  std 1, lm_head 3/sqrt(fan_in)), norm weights 1 + N(0, 0.05), k_norm bias and correction bias
  N(0, 0.05), so attention, indexer scores and routing are not flat.
- Tokenizer: byte-level BPE in Hugging Face `tokenizers` format; 256 byte tokens (id = byte value,
  GPT-2 byte-to-unicode map), {n_merges} merges learned by `tools/make_bundled_model.py` on the
  files of `/usr/share/common-licenses/` (Debian 12), then `<|endoftext|>` (eos, id {eos}) and
  `<|begin|>` (bos, id {bos}). The pre-tokenizer is ByteLevel with `use_regex: true`, which means the
  GPT-2 split pattern
  `'s|'t|'re|'ve|'m|'ll|'d| ?\\p{{L}}+| ?\\p{{N}}+| ?[^\\s\\p{{L}}\\p{{N}}]+|\\s+(?!\\S)|\\s+`
  (the trainer used a Python-`re` approximation of it; encoders use the exact pattern).

Made by (deterministic, byte-identical on re-run):

    /usr/bin/python3 tools/make_bundled_model.py --out models/glm-dsa-tiny-random

sha256:

{sums}
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="models/glm-dsa-tiny-random", help="output folder")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)

    names, texts = read_corpus()
    print(f"tokenizer corpus: {len(names)} files ({', '.join(names)})")
    tokenizer = build_tokenizer(texts, VOCAB_SIZE)
    with open(os.path.join(args.out, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tokenizer, f, ensure_ascii=False, indent=2)
        f.write("\n")

    with open(os.path.join(args.out, "config.json"), "w", encoding="utf-8") as f:
        json.dump(CONFIG, f, indent=2)
        f.write("\n")

    write_safetensors(os.path.join(args.out, "model.safetensors"), build_weights(CONFIG))

    files = ["config.json", "model.safetensors", "tokenizer.json"]
    sums = "\n".join(f"    {sha256_of(os.path.join(args.out, n))}  {n}" for n in files)
    c = CONFIG
    readme = README_TEMPLATE.format(
        n_layers=c["num_hidden_layers"], last=c["num_hidden_layers"] - 1, n_experts=c["n_routed_experts"],
        top_k=c["num_experts_per_tok"], hidden=c["hidden_size"], n_heads=c["num_attention_heads"],
        q_lora=c["q_lora_rank"], kv_lora=c["kv_lora_rank"], nope=c["qk_nope_head_dim"],
        rope=c["qk_rope_head_dim"], v=c["v_head_dim"], ix_heads=c["index_n_heads"],
        ix_dim=c["index_head_dim"], topk=c["index_topk"], vocab=c["vocab_size"],
        n_merges=len(tokenizer["model"]["merges"]), eos=EOS_ID, bos=BOS_ID, sums=sums)
    with open(os.path.join(args.out, "README.md"), "w", encoding="utf-8") as f:
        f.write(readme)
    print(sums)


if __name__ == "__main__":
    main()
