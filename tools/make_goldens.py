#!/usr/bin/env python3
"""Writes golden outputs of the reference `GlmMoeDsaForCausalLM` (transformers 5.17) for the C++ tests.

Runs where torch, transformers, tokenizers and safetensors are installed (the GPU machine); computes
on the CPU in float32, needs no network, takes about a minute. From the repository root:

    python3 tools/make_goldens.py                 # writes tests/data/goldens/ and tests/data/tokenizer_golden.json
    python3 tools/make_goldens.py --selfcheck     # same work, written to a temporary folder; repo untouched

Every output is computed from the checkpoint as reloaded from disk, and the script stops with an
error if anything does not add up (missing/unexpected weights, a reload that changes a tensor, an
indexer-score recomputation that disagrees with the model's own top-k). tests/data/goldens/README.md
describes the files.
"""

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import safetensors  # noqa: E402
import safetensors.torch  # noqa: E402
import tokenizers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import GlmMoeDsaConfig, GlmMoeDsaForCausalLM  # noqa: E402
from transformers.models.glm_moe_dsa import modeling_glm_moe_dsa as reference  # noqa: E402

T0 = time.time()
SIZE_BUDGET = 9 * 1024 * 1024  # bytes committed under goldens/ + the tokenizer golden

# Shared by the tiny cases; each case overrides some of these.
# index_n_heads is mostly 16: with few heads an indexer score is often exactly 0 (every head's ReLU
# clips it) and such exact ties at the top-k boundary make the reference's pick arbitrary.
TINY_BASE = dict(
    vocab_size=256, hidden_size=64, num_attention_heads=4, num_key_value_heads=4,
    q_lora_rank=48, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16,
    intermediate_size=96, moe_intermediate_size=16, n_routed_experts=8, num_experts_per_tok=2,
    n_shared_experts=1, n_group=1, topk_group=1, norm_topk_prob=True, routed_scaling_factor=2.5,
    index_n_heads=16, index_head_dim=16, rms_norm_eps=1e-5, max_position_embeddings=512,
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    bos_token_id=0, eos_token_id=1, tie_word_embeddings=False,
)

# name -> (config overrides, sequence length, indexer_types the config must resolve to)
F, S = "full", "shared"
TINY_CASES = {
    "dense_allfull": (
        dict(num_hidden_layers=4, first_k_dense_replace=4, index_topk=12), 48, [F, F, F, F]),
    "moe_freq2": (
        dict(num_hidden_layers=5, first_k_dense_replace=1, n_group=2, topk_group=1, index_topk=16,
             index_topk_freq=2), 56, [F, F, S, F, S]),
    "moe_pattern": (
        dict(num_hidden_layers=6, first_k_dense_replace=2, index_topk=10, index_n_heads=8,
             index_topk_pattern="FFSSFS", tie_word_embeddings=True), 64, [F, F, S, S, F, S]),
    "dense_topk_ge_len": (
        dict(num_hidden_layers=4, first_k_dense_replace=4, index_topk=64, index_n_heads=4), 40,
        [F, F, F, F]),
}
GREEDY_PROMPT = 16
GREEDY_NEW_TINY = 16
# Inputs are re-drawn (next seed) until nothing in them is ambiguous: no top-k boundary within
# 1e-4 (relative) of the next key, in the prompt or in the greedy sequence, and every greedy step's
# top-1 logit ahead of the top-2 by MIN_MARGIN. Then an implementation that is right reproduces
# the goldens exactly, whatever its tie-breaking.
MAX_INPUT_ATTEMPTS = 40
MIN_MARGIN = 0.05

BUNDLED_DIR = "models/glm-dsa-tiny-random"
BUNDLED_T = 96  # > index_topk (64), so the top-k selection is really sparse for the last 32 rows
BUNDLED_TAIL = 8
# The trained default model (tools/train/): T > its index_topk (128), so the last 32 rows are sparse.
TRAINED_DIR = "models/glm-dsa-trained"
TRAINED_T = 160
GREEDY_NEW_BUNDLED = 12

TOKENIZER_CASES = [
    "Hello world", "hello", "Hello, world!", " leading space", "trailing space ", "  two leading",
    "multiple   spaces   inside", "tab\tseparated\tvalues", "line one\nline two\n", "\n\n\nnewlines",
    "mixed \t\n whitespace \n\t end", "   ", "", "don't we'll they're I'm you've she'd it's",
    "DON'T WE'LL", "numbers 0 1 12 123 1234 12345 3.14159 -42 1e10", "2026-03-11T12:00:00Z",
    "punctuation!!! ??? ... ;:,. (parens) [brackets] {braces} <angle>",
    "snake_case_name and camelCase and kebab-case", "x = a*b + c/d - e^f % g;",
    "def f(x):\n    return x + 1\n", "https://example.com/path?q=1&r=2#frag", "email: a.b@example.org",
    "café naïve résumé façade", "Grüße aus Köln, Ærøskøbing, señor", "Ελληνικά γράμματα αβγ",
    "Русский текст", "中文字符测试", "日本語のテキスト", "한국어 텍스트", "emoji 😀🚀👍🏽 family 👨‍👩‍👧",
    "a<|endoftext|>b", "<|begin|>start of text", "end of text<|endoftext|>", "<|begin|> <|endoftext|>",
    "THE GNU GENERAL PUBLIC LICENSE", "Permission is hereby granted, free of charge,",
    "\u00a0non-breaking\u00a0space", "zero\u200bwidth", "1,000,000 dollars and 50¢",
]


def log(msg):
    print(f"[make_goldens {time.time() - T0:6.1f}s] {msg}", flush=True)


def fail(msg):
    print(f"[make_goldens] FAILED: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def versions():
    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__, "safetensors": safetensors.__version__,
            "numpy": np.__version__, "python": sys.version.split()[0]}


# ---------------------------------------------------------------------------------------------
# Model construction and loading
# ---------------------------------------------------------------------------------------------


def randomize_weights(model, cfg, seed):
    """Re-draws every parameter so that activations have std ~1 and nothing is flat.

    Linear weights N(0, 1/fan_in), embedding N(0, 1), lm_head 3/sqrt(fan_in), norm weights
    1 + N(0, 0.05), LayerNorm bias and e_score_correction_bias N(0, 0.05). Unknown names are errors.
    """
    g = torch.Generator().manual_seed(seed)

    def randn(shape, std):
        return torch.randn(tuple(shape), generator=g, dtype=torch.float32) * std

    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("embed_tokens.weight"):
                p.copy_(randn(p.shape, 1.0))
            elif name == "lm_head.weight":
                p.copy_(randn(p.shape, 3.0 / p.shape[1] ** 0.5))
            elif name.endswith("experts.gate_up_proj"):
                p.copy_(randn(p.shape, cfg.hidden_size ** -0.5))
            elif name.endswith("experts.down_proj"):
                p.copy_(randn(p.shape, cfg.moe_intermediate_size ** -0.5))
            elif name.endswith("k_norm.bias"):
                p.copy_(randn(p.shape, 0.05))
            elif p.dim() == 1 and "norm" in name:
                p.copy_(1.0 + randn(p.shape, 0.05))
            elif p.dim() == 2 and name.endswith(".weight"):
                p.copy_(randn(p.shape, p.shape[1] ** -0.5))
            else:
                fail(f"randomize_weights: no rule for parameter {name} {tuple(p.shape)}")
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(randn(b.shape, 0.05))


def load_checked(path):
    """from_pretrained in float32/eager; any missing, unexpected or mismatched weight is fatal."""
    model, info = GlmMoeDsaForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation="eager", output_loading_info=True)
    problems = {k: v for k, v in info.items() if v}
    if problems:
        fail(f"loading {path}: {problems}")
    if model.config._attn_implementation != "eager":
        fail(f"loading {path}: attention implementation is {model.config._attn_implementation}, not eager")
    return model.eval()


def tensor_manifest(path):
    """name -> {dtype, shape} of every tensor in the safetensors file(s) of a checkpoint folder."""
    files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
    if not files:
        fail(f"{path}: save_pretrained wrote no .safetensors file")
    tensors = {}
    for f in files:
        with safetensors.safe_open(os.path.join(path, f), framework="pt") as st:
            for name in st.keys():
                sl = st.get_slice(name)
                tensors[name] = {"dtype": sl.get_dtype(), "shape": list(sl.get_shape())}
    return files, dict(sorted(tensors.items()))


def check_file_matches_model(path, model):
    """Every tensor stored in the checkpoint file must equal the loaded parameter it maps to.

    Per-expert hub tensors `mlp.experts.{e}.{gate,up,down}_proj.weight` map to slices of the fused
    `gate_up_proj` [E, 2I, H] (gate rows first) and `down_proj` [E, H, I]; anything else must
    exist under the same name.
    """
    state = model.state_dict()
    expert_re = re.compile(r"^(.*\.mlp\.experts)\.(\d+)\.(gate|up|down)_proj\.weight$")
    checked = 0
    for f in sorted(f for f in os.listdir(path) if f.endswith(".safetensors")):
        with safetensors.safe_open(os.path.join(path, f), framework="pt") as st:
            for name in st.keys():
                stored = st.get_tensor(name).float()
                m = expert_re.match(name)
                if name in state:
                    loaded = state[name]
                elif m:
                    prefix, e, proj = m.group(1), int(m.group(2)), m.group(3)
                    if proj == "down":
                        loaded = state[prefix + ".down_proj"][e]
                    else:
                        gate_up = state[prefix + ".gate_up_proj"][e]
                        half = gate_up.shape[0] // 2
                        loaded = gate_up[:half] if proj == "gate" else gate_up[half:]
                else:
                    fail(f"{path}: stored tensor {name} maps to no model parameter")
                if tuple(loaded.shape) != tuple(stored.shape) or not torch.equal(loaded.float(), stored):
                    fail(f"{path}: tensor {name} differs after loading")
                checked += 1
    log(f"  {checked} stored tensors equal the loaded parameters")


# ---------------------------------------------------------------------------------------------
# Capturing top-k and indexer scores
# ---------------------------------------------------------------------------------------------


def recompute_index_scores(ix, hidden, q_resid, position_embeddings):
    """[S, S] indexer scores I[t, s] = sum_h w[t,h] * relu(q[t,h] . k[s]) * scale, unmasked.

    Same computation as the reference indexer's forward up to its top-k (interleaved RoPE on the
    first qk_rope_head_dim dims of q and k, LayerNorm on k, per-head weights / sqrt(n_heads)).
    """
    b, s, _ = hidden.shape
    cos, sin = position_embeddings
    r = ix.qk_rope_head_dim
    q = ix.wq_b(q_resid).view(b, s, ix.n_heads, ix.head_dim)
    k = ix.k_norm(ix.wk(hidden)).unsqueeze(2)  # [B, S, 1, D]
    q_rot, k_rot = reference.apply_rotary_pos_emb_interleave(q[..., :r], k[..., :r], cos, sin, unsqueeze_dim=2)
    q = torch.cat([q_rot, q[..., r:]], dim=-1)  # [B, S, H, D]
    k = torch.cat([k_rot, k[..., r:]], dim=-1).squeeze(2)  # [B, S, D]
    logits = torch.einsum("bshd,btd->bsht", q.float(), k.float()) * ix.softmax_scale
    w = ix.weights_proj(hidden.to(ix.weights_proj.weight.dtype)).float() * ix.n_heads ** -0.5
    return torch.einsum("bsh,bsht->bst", w, torch.relu(logits))[0]


class Capture:
    """Forward hooks: every layer's top-k indices (self_attn output 3) and Full layers' scores."""

    def __init__(self, model):
        self.topk = {}
        self.scores = {}
        self.handles = []
        for i, layer in enumerate(model.model.layers):
            attn = layer.self_attn
            self.handles.append(attn.register_forward_hook(self._topk_hook(i)))
            if attn.indexer is not None:
                self.handles.append(attn.indexer.register_forward_hook(self._score_hook(i), with_kwargs=True))

    def _topk_hook(self, i):
        def hook(module, args, output):
            self.topk[i] = output[2].detach()[0].to(torch.int64).clone()
        return hook

    def _score_hook(self, i):
        def hook(module, args, kwargs, output):
            with torch.no_grad():
                self.scores[i] = recompute_index_scores(module, args[0], args[1], args[2])
        return hook

    def remove(self):
        for h in self.handles:
            h.remove()


def canonical_topk(raw, t_len):
    """[T, k] raw top-k -> valid (causal) key positions ascending, then -1 padding.

    Row t must hold exactly min(k, t+1) distinct causal positions: the mask makes every non-causal
    key score lower than any causal one, so the reference only picks them to fill short rows.
    """
    k = raw.shape[1]
    out = torch.full((t_len, k), -1, dtype=torch.int32)
    for t in range(t_len):
        valid = sorted({int(x) for x in raw[t] if 0 <= int(x) <= t})
        if len(valid) != min(k, t + 1):
            fail(f"top-k row {t}: {len(valid)} distinct causal picks, expected {min(k, t + 1)}")
        out[t, :len(valid)] = torch.tensor(valid, dtype=torch.int32)
    return out


def check_scores_agree(layer, scores, canon):
    """The recomputed scores must rank the model's picks above every unpicked causal key.

    Returns the number of rows whose boundary gap is a near-tie (< 1e-4 relative).
    """
    near = 0
    for t in range(canon.shape[0]):
        picked = [int(x) for x in canon[t] if x >= 0]
        if len(picked) == t + 1:
            continue
        row = scores[t, : t + 1]
        mask = torch.ones(t + 1, dtype=torch.bool)
        mask[picked] = False
        lo, hi = float(row[picked].min()), float(row[mask].max())
        tol = 1e-4 * (1.0 + abs(lo))
        if lo < hi - tol:
            fail(f"layer {layer} row {t}: recomputed scores disagree with the model's top-k "
                 f"(lowest picked {lo}, highest unpicked {hi})")
        if lo - hi < tol:
            near += 1
    return near


def run_prefill(model, input_ids):
    """Full-sequence forward without cache. Returns logits [T, V] and per-layer tensors."""
    t_len = input_ids.shape[0]
    types = list(model.config.indexer_types)
    cap = Capture(model)
    try:
        with torch.no_grad():
            logits = model(input_ids=input_ids[None], use_cache=False).logits[0].float()
    finally:
        cap.remove()
    if sorted(cap.topk) != list(range(len(types))):
        fail(f"captured top-k for layers {sorted(cap.topk)}, expected all {len(types)}")
    tensors, near_ties, sources = {}, {}, []
    source = None
    for i, kind in enumerate(types):
        if kind == "full":
            source = i
            if i not in cap.scores:
                fail(f"layer {i} is full but its indexer did not run")
        elif not torch.equal(cap.topk[i], cap.topk[source]):
            fail(f"shared layer {i} did not reuse the top-k of full layer {source}")
        sources.append(source)
        canon = canonical_topk(cap.topk[i], t_len)
        scores = cap.scores[source]
        causal = torch.ones(t_len, t_len, dtype=torch.bool).tril()
        masked = scores.masked_fill(~causal, float("-inf"))
        if kind == "full":
            near_ties[str(i)] = check_scores_agree(i, scores, canon)
            tensors[f"index_scores.{i}"] = masked.contiguous()
        picked = masked.gather(1, canon.clamp(min=0).long())
        tensors[f"topk.{i}"] = canon.contiguous()
        tensors[f"topk_scores.{i}"] = picked.masked_fill(canon < 0, float("-inf")).contiguous()
    return logits, tensors, near_ties, sources


def run_greedy(model, prompt, n_new):
    """Greedy continuation through generate() (KV + index-key cache), checked without cache.

    eos is disabled so exactly n_new tokens come out. The no-cache loop re-runs the whole prefix
    each step; its top-1 minus top-2 logit margins tell the C++ test how close each step was.
    """
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    with torch.no_grad():
        out = model.generate(input_ids=prompt[None], attention_mask=torch.ones_like(prompt[None]),
                             max_new_tokens=n_new, do_sample=False, num_beams=1)
    cached = [int(x) for x in out[0, prompt.shape[0]:]]
    ids = prompt.clone()
    nocache, margins = [], []
    with torch.no_grad():
        for _ in range(n_new):
            last = model(input_ids=ids[None], use_cache=False).logits[0, -1].float()
            top2 = torch.topk(last, 2).values
            nxt = int(torch.argmax(last))
            nocache.append(nxt)
            margins.append(float(top2[0] - top2[1]))
            ids = torch.cat([ids, torch.tensor([nxt], dtype=ids.dtype)])
    if len(cached) != n_new:
        log(f"  WARNING: generate() returned {len(cached)} tokens, expected {n_new}")
    if cached != nocache:
        log(f"  WARNING: cached generate {cached} != no-cache greedy {nocache} (margins {margins})")
    return {"prompt_ids": [int(x) for x in prompt], "output_ids": cached, "nocache_output_ids": nocache,
            "cache_matches_nocache": cached == nocache, "margins": margins}


def pick_input(model, t_len, low, high, seed, n_new):
    """Draws input ids in [low, high) until no top-k boundary or greedy step is a near-tie.

    Returns (attempt index, ambiguity count, input_ids, prefill results, greedy results) of the
    first clean draw, or of the least ambiguous one after MAX_INPUT_ATTEMPTS (reported, not fatal).
    """
    best = None
    for attempt in range(MAX_INPUT_ATTEMPTS):
        g = torch.Generator().manual_seed(seed + attempt)
        input_ids = torch.randint(low, high, (t_len,), generator=g)
        prefill = run_prefill(model, input_ids)
        greedy = run_greedy(model, input_ids[:GREEDY_PROMPT], n_new)
        sequence = torch.tensor(greedy["prompt_ids"] + greedy["output_ids"], dtype=input_ids.dtype)
        greedy_ties = run_prefill(model, sequence)[2]
        bad = (sum(prefill[2].values()) + sum(greedy_ties.values())
               + sum(m < MIN_MARGIN for m in greedy["margins"]) + (not greedy["cache_matches_nocache"]))
        if best is None or bad < best[1]:
            best = (attempt, bad, input_ids, prefill, greedy)
        if bad == 0:
            break
    attempt, bad = best[0], best[1]
    if bad:
        log(f"  WARNING: no unambiguous input in {MAX_INPUT_ATTEMPTS} draws; keeping draw {attempt} "
            f"with {bad} near-ties (see near_tie_rows and greedy.margins)")
    else:
        log(f"  input draw {attempt} is unambiguous")
    return best


def config_summary(cfg):
    keys = ["vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "q_lora_rank",
            "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "intermediate_size",
            "moe_intermediate_size", "n_routed_experts", "num_experts_per_tok", "n_shared_experts",
            "n_group", "topk_group", "routed_scaling_factor", "norm_topk_prob", "first_k_dense_replace",
            "mlp_layer_types", "index_n_heads", "index_head_dim", "index_topk", "indexer_types",
            "tie_word_embeddings", "rms_norm_eps", "rope_parameters", "bos_token_id", "eos_token_id"]
    return {k: getattr(cfg, k, None) for k in keys}


def write_expected(out_dir, tensors, meta):
    safetensors.torch.save_file(tensors, os.path.join(out_dir, "expected.safetensors"),
                                metadata={"generator": "tools/make_goldens.py"})
    with open(os.path.join(out_dir, "expected.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")


TOPK_ORDER = ("row t of topk.{i}: the key positions layer i attends to from query t, valid (causal) "
              "positions ascending, then -1 where t+1 < k; topk_scores.{i} holds their indexer scores "
              "(-inf at -1); index_scores.{i} [T,T] (Full layers) is -inf above the diagonal")


# ---------------------------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------------------------


def make_tiny_case(name, out_root, seed):
    overrides, t_len, want_types = TINY_CASES[name]
    log(f"case {name}: T={t_len} {overrides}")
    cfg = GlmMoeDsaConfig(**{**TINY_BASE, **overrides})
    if list(cfg.indexer_types) != want_types:
        fail(f"{name}: config resolved indexer_types {cfg.indexer_types}, expected {want_types}")
    torch.manual_seed(seed)
    model = GlmMoeDsaForCausalLM(cfg).float()
    randomize_weights(model, cfg, seed)
    case_dir = os.path.join(out_root, name)
    if os.path.isdir(case_dir):
        shutil.rmtree(case_dir)
    model.save_pretrained(case_dir)
    files, manifest = tensor_manifest(case_dir)

    loaded = load_checked(case_dir)
    original = model.state_dict()
    for key, value in loaded.state_dict().items():
        if key in original and not torch.equal(original[key], value):
            fail(f"{name}: {key} changed between save_pretrained and from_pretrained")
    check_file_matches_model(case_dir, loaded)
    with open(os.path.join(case_dir, "manifest.json"), "w", encoding="utf-8") as f:
        json.dump({"written_by": "save_pretrained", "versions": versions(), "files": files,
                   "tensors": manifest}, f, indent=1)
        f.write("\n")

    attempt, ambiguities, input_ids, prefill, greedy = pick_input(
        loaded, t_len, 2, cfg.vocab_size, seed + 1000, GREEDY_NEW_TINY)
    logits, tensors, near_ties, sources = prefill
    tensors["logits"] = logits.contiguous()
    meta = {"case": name, "versions": versions(), "seq_len": t_len, "input_seed": seed + 1000 + attempt,
            "ambiguities": ambiguities, "input_ids": [int(x) for x in input_ids], "indexer_types": list(loaded.config.indexer_types),
            "topk_source_layer": sources, "topk_k": min(cfg.index_topk, t_len), "topk_order": TOPK_ORDER,
            "near_tie_rows": near_ties, "greedy": greedy, "config_summary": config_summary(loaded.config)}
    write_expected(case_dir, tensors, meta)
    log(f"  logits std {float(logits.std()):.3f}, near-tie rows {near_ties}, greedy {greedy['output_ids']}")


def make_bundled(bundled_dir, out_root, seed, case="bundled", t_len=BUNDLED_T):
    """Goldens of a shipped all-Full checkpoint (random token ids below the special tokens)."""
    log(f"{case} model {bundled_dir}: T={t_len}")
    model = load_checked(bundled_dir)
    check_file_matches_model(bundled_dir, model)
    cfg = model.config
    if any(t != "full" for t in cfg.indexer_types):
        fail(f"bundled model should be all-Full, config resolved {cfg.indexer_types}")
    attempt, ambiguities, input_ids, prefill, greedy = pick_input(  # ids below the special tokens
        model, t_len, 0, cfg.vocab_size - 2, seed, GREEDY_NEW_BUNDLED)
    logits, tensors, near_ties, sources = prefill
    tail_start = t_len - BUNDLED_TAIL
    tensors = {k: v for k, v in tensors.items() if not k.startswith("index_scores.")}  # size
    tensors["logits_tail"] = logits[tail_start:].contiguous()
    case_dir = os.path.join(out_root, case)
    os.makedirs(case_dir, exist_ok=True)
    meta = {"case": case, "model_dir": bundled_dir, "versions": versions(), "seq_len": t_len,
            "input_seed": seed + attempt, "ambiguities": ambiguities, "input_ids": [int(x) for x in input_ids], "tail_start": tail_start,
            "indexer_types": list(cfg.indexer_types), "topk_source_layer": sources,
            "topk_k": min(cfg.index_topk, t_len), "topk_order": TOPK_ORDER, "near_tie_rows": near_ties,
            "greedy": greedy, "config_summary": config_summary(cfg)}
    write_expected(case_dir, tensors, meta)
    log(f"  logits std {float(logits.std()):.3f}, near-tie rows {near_ties}, greedy {greedy['output_ids']}")


def make_tokenizer_golden(bundled_dir, path, tokenizer_ref):
    tok = tokenizers.Tokenizer.from_file(os.path.join(bundled_dir, "tokenizer.json"))
    cases = []
    for text in TOKENIZER_CASES:
        ids = tok.encode(text).ids
        back = tok.decode(ids, skip_special_tokens=False)
        if back != text:
            fail(f"tokenizer does not round-trip {text!r}: {back!r}")
        cases.append({"text": text, "ids": ids})
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"tokenizer": tokenizer_ref, "versions": versions(), "cases": cases}, f,
                  ensure_ascii=False, indent=1)
        f.write("\n")
    log(f"tokenizer golden: {len(cases)} cases, e.g. {cases[0]['text']!r} -> {cases[0]['ids']}")


def folder_bytes(paths):
    total = 0
    for p in paths:
        if os.path.isfile(p):
            total += os.path.getsize(p)
        for root, _, files in os.walk(p):
            total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="tests/data/goldens", help="goldens folder")
    parser.add_argument("--bundled", default=BUNDLED_DIR, help="bundled model folder")
    parser.add_argument("--trained", default=TRAINED_DIR, help="trained model folder (skipped when absent)")
    parser.add_argument("--tokenizer-golden", default="tests/data/tokenizer_golden.json")
    parser.add_argument("--trained-tokenizer-golden", default="tests/data/tokenizer_golden_trained.json")
    parser.add_argument("--selfcheck", action="store_true",
                        help="do everything, but write into a temporary folder and leave the repo untouched")
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args()

    torch.set_num_threads(min(16, os.cpu_count() or 1))
    log(f"versions {versions()}, threads {torch.get_num_threads()}")
    if not os.path.isfile(os.path.join(args.bundled, "model.safetensors")):
        fail(f"{args.bundled}/model.safetensors not found: run from the repository root")

    tmp = tempfile.mkdtemp(prefix="goldens-selfcheck-") if args.selfcheck else None
    out = os.path.join(tmp, "goldens") if tmp else args.out
    tok_path = os.path.join(tmp, "tokenizer_golden.json") if tmp else args.tokenizer_golden
    os.makedirs(out, exist_ok=True)
    log(f"writing to {out} and {tok_path}")

    make_tokenizer_golden(args.bundled, tok_path, os.path.join(args.bundled, "tokenizer.json"))
    make_bundled(args.bundled, out, args.seed)
    trained_tok = None
    if os.path.isfile(os.path.join(args.trained, "model.safetensors")):
        trained_tok = os.path.join(tmp, "tokenizer_golden_trained.json") if tmp else args.trained_tokenizer_golden
        make_tokenizer_golden(args.trained, trained_tok, os.path.join(args.trained, "tokenizer.json"))
        make_bundled(args.trained, out, args.seed + 7, case="trained", t_len=TRAINED_T)
    for i, name in enumerate(TINY_CASES):
        make_tiny_case(name, out, args.seed + 100 * (i + 1))

    size = folder_bytes([out, tok_path] + ([trained_tok] if trained_tok else []))
    log(f"total size {size / 1e6:.2f} MB (budget {SIZE_BUDGET / 1e6:.2f} MB)")
    if size > SIZE_BUDGET:
        fail("goldens exceed the size budget: shrink the tiny cases")
    if tmp:
        shutil.rmtree(tmp)
        log("SELFCHECK OK (temporary output removed)")
    else:
        log("done")


if __name__ == "__main__":
    main()
