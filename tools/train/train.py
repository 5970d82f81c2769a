#!/usr/bin/env python3
"""Trains the bundled `glm_moe_dsa` model by DSA's recipe, distills an IndexCache 1/4 variant, exports both.

Runs on the GPU machine (torch 2.11, transformers 5.17, tokenizers), from the repository root, in one
call that ends inside its wall-clock budget (each phase has its own share, in seconds):

    python3 tools/train/train.py --data data/train --out $OUT/run

Phases (tools/train/README.md has the why):
  1. dense     causal MLA over every key, LM loss; the indexers do not run
  2. warm-up   only the indexers learn: KL(head-summed dense attention ‖ softmax(indexer scores)) per layer
  3. sparse    every layer attends to its indexer's top-k keys; LM loss for the model, and the indexer
               KL restricted to the selected keys, its input detached (DSA's sparse stage)
  4. distill   for the pattern --distill-pattern (uniform 1/4), only the Full layers' indexers learn,
               each against the average of the dense attention distributions of the layers it serves
Then export (bf16 safetensors + config.json + tokenizer.json) of the all-Full model and of the distilled
one (indexer weights only for its Full layers, the pattern in its config), and a check that
transformers 5.17 loads each and gives this model's logits.

Data: data/train/train.txt.xz (tools/corpus/build_corpus.py) and data/train/tokenizer.json
(tools/train/train_tokenizer.py). The retrieval curriculum, in every phase: --retrieval-share of the rows
are packed with synthetic retrieval documents (tools/corpus/retrieval.py; filler from training text,
fresh keys) of 48 tokens up to the whole row, log-uniform, the answer at a uniform depth, and the answer
tokens weigh --answer-weight in the LM loss; the curve records the answer tokens' argmax accuracy.
"""

import argparse
import bisect
import json
import lzma
import math
import os
import random
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "corpus"))
import dsa_model  # noqa: E402
import retrieval  # noqa: E402

T0 = time.time()
DOC_SEPARATOR = "<|endoftext|>"

CONFIG = {
    "architectures": ["GlmMoeDsaForCausalLM"],
    "model_type": "glm_moe_dsa",
    "vocab_size": 4096,
    "hidden_size": 256,
    "num_hidden_layers": 16,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "q_lora_rank": 128,
    "kv_lora_rank": 64,
    "qk_nope_head_dim": 32,
    "qk_rope_head_dim": 16,
    "v_head_dim": 32,
    "intermediate_size": 512,
    "moe_intermediate_size": 48,
    "n_routed_experts": 8,
    "num_experts_per_tok": 2,
    "n_shared_experts": 1,
    "n_group": 1,
    "topk_group": 1,
    "norm_topk_prob": True,
    "routed_scaling_factor": 2.5,
    "first_k_dense_replace": 1,
    "index_n_heads": 16,
    "index_head_dim": 32,
    "index_topk": 128,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-05,
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
    "max_position_embeddings": 8192,
    "attention_bias": False,
    "attention_dropout": 0.0,
    "initializer_range": 0.02,
    "tie_word_embeddings": False,
    "use_cache": True,
    "bos_token_id": 4095,
    "eos_token_id": 4094,
    "pad_token_id": None,
    "dtype": "bfloat16",
    "torch_dtype": "bfloat16",
}


def log(msg):
    print(f"[train {time.time() - T0:6.1f}s] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


MIN_DOC_TOKENS = 48


class RetrievalDoc:
    """Token ids of prompt + answer + "." + eos, and where the answer's tokens are."""

    def __init__(self, prompt_ids, answer_ids, tail_ids):
        self.ids = np.array(prompt_ids + answer_ids + tail_ids, dtype=np.int64)
        self.answer = (len(prompt_ids), len(prompt_ids) + len(answer_ids))


def retrieval_docs(tok, filler, seq_len, n, rng):
    """n documents drawn at log-uniform lengths from MIN_DOC_TOKENS to 1.3 rows (sized from characters,
    which overestimates tokens on training text), those longer than a row dropped; sorted by length."""
    eos = tok.token_to_id(DOC_SEPARATOR)
    top = math.log(1.3 * (seq_len + 1))
    texts = [retrieval.make_training_document(rng, filler, math.exp(rng.uniform(math.log(MIN_DOC_TOKENS), top)))
             for _ in range(n)]
    prompts = tok.encode_batch([p for p, _ in texts])
    answers = tok.encode_batch([a for _, a in texts])
    period = tok.encode(".").ids + [eos]
    docs = [RetrievalDoc(p.ids, a.ids, period) for p, a in zip(prompts, answers)]
    return sorted((d for d in docs if len(d.ids) <= seq_len + 1), key=lambda d: len(d.ids))


def load_data(data_dir, seq_len, n_retrieval_docs, seed):
    import tokenizers
    tok = tokenizers.Tokenizer.from_file(os.path.join(data_dir, "tokenizer.json"))
    with lzma.open(os.path.join(data_dir, "train.txt.xz"), "rt", encoding="utf-8") as f:
        docs = f.read().split(DOC_SEPARATOR)
    eos = tok.token_to_id(DOC_SEPARATOR)
    encoded = tok.encode_batch(docs)
    stream = np.concatenate([np.array(e.ids + [eos], dtype=np.uint16) for e in encoded])
    chars = sum(len(d) for d in docs)
    log(f"train text: {len(docs)} documents, {chars / 1e6:.1f} M characters, {len(stream) / 1e6:.2f} M tokens "
        f"({chars / len(stream):.2f} characters/token)")
    rng = random.Random(seed)
    filler = retrieval.sentences("\n".join(docs[i] for i in rng.sample(range(len(docs)), 400)))
    synthetic = retrieval_docs(tok, filler, seq_len, n_retrieval_docs, rng)
    lengths = np.array([len(d.ids) for d in synthetic])
    log(f"{len(synthetic)} synthetic retrieval documents of {n_retrieval_docs} fit a row: tokens min {lengths.min()} "
        f"median {np.median(lengths):.0f} mean {lengths.mean():.0f} max {lengths.max()}; "
        f"answers of {np.mean([d.answer[1] - d.answer[0] for d in synthetic]):.2f} tokens")
    return torch.from_numpy(stream.astype(np.int64)), synthetic


class Batches:
    """Rows of seq_len+1 tokens: a share of them packed with retrieval documents (then text), the rest
    random windows of the text. Also per-target loss weights (answer_weight on answer tokens) and
    the answer mask (None when the batch has no answer)."""

    def __init__(self, stream, synthetic, seq_len, retrieval_share, answer_weight, seed):
        self.stream, self.synthetic, self.seq_len, self.share = stream, synthetic, seq_len, retrieval_share
        self.answer_weight = answer_weight
        self.lengths = [len(d.ids) for d in synthetic]
        self.rng = random.Random(seed)

    def _retrieval_row(self, row, answer):
        pos = 0
        while self.seq_len + 1 - pos >= MIN_DOC_TOKENS:
            fits = bisect.bisect_right(self.lengths, self.seq_len + 1 - pos)
            if fits == 0:
                break
            doc = self.synthetic[self.rng.randrange(fits)]
            row[pos:pos + len(doc.ids)] = torch.from_numpy(doc.ids)
            answer[pos + doc.answer[0]:pos + doc.answer[1]] = True
            pos += len(doc.ids)
        return pos

    def next(self, batch, device):
        rows = torch.empty(batch, self.seq_len + 1, dtype=torch.int64)
        answer = torch.zeros(batch, self.seq_len + 1, dtype=torch.bool)
        for r in range(batch):
            pos = self._retrieval_row(rows[r], answer[r]) if self.rng.random() < self.share else 0
            start = self.rng.randrange(len(self.stream) - self.seq_len - 1)
            rows[r, pos:] = self.stream[start:start + self.seq_len + 1 - pos]
        answer = answer[:, 1:]  # over the targets
        weight = (1.0 + (self.answer_weight - 1.0) * answer.float()).to(device, non_blocking=True)
        answer = answer.to(device, non_blocking=True) if answer.any() else None  # tested here: no device sync
        rows = rows.to(device, non_blocking=True)
        return rows[:, :-1], rows[:, 1:], weight, answer


# ---------------------------------------------------------------------------------------------
# Losses and schedules
# ---------------------------------------------------------------------------------------------


def kl_to_indexer(target, scores, keys=None):
    """Mean over queries of KL(target ‖ softmax(scores)) on `keys` (boolean [B,T,T]; None: causal keys).

    target [B,T,T] float32 sums to 1 over the causal keys; restricted to `keys` it is renormalized."""
    allowed = torch.isfinite(scores) if keys is None else keys & torch.isfinite(scores)
    if keys is not None:
        target = target * keys
        target = target / target.sum(-1, keepdim=True).clamp_min(1e-30)
    logq = torch.log_softmax(scores.masked_fill(~allowed, -1e9), dim=-1)
    terms = torch.where(target > 0, target * (torch.log(target.clamp_min(1e-30)) - logq), torch.zeros_like(logq))
    return terms.sum(-1).mean()


def lr_at(fraction, peak, warmup=0.03, floor=0.1):
    """Linear warm-up, then cosine to floor·peak, over the phase's elapsed share of its time budget."""
    if fraction < warmup:
        return peak * fraction / warmup
    progress = min(1.0, (fraction - warmup) / (1 - warmup))
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def update_router_bias(model, rate=1e-3):
    """Aux-loss-free balancing: nudge each expert's selection bias toward equal load."""
    with torch.no_grad():
        for layer in model.layers:
            mlp = layer.mlp
            if isinstance(mlp, dsa_model.Moe) and mlp.last_load is not None:
                load = mlp.last_load
                mlp.gate.e_score_correction_bias += rate * torch.sign(load.mean() - load)


def groups_of(pattern):
    """Full layer -> the layers it serves (itself and the Shared layers after it)."""
    out, current = {}, None
    for i, kind in enumerate(pattern):
        if kind == "F":
            current = i
            out[i] = []
        out[current].append(i)
    return out


# ---------------------------------------------------------------------------------------------
# Phases
# ---------------------------------------------------------------------------------------------


def run_phase(name, model, batches, args, budget_s, step_fn, params, peak_lr, batch, curve, balance=False):
    """Steps until the phase's time budget is spent; logs and records the loss curve.

    balance: update the MoE selection biases (only in phases that train the model itself; the
    indexer-only phases must leave every other weight, these biases included, as it was)."""
    cuda = args.device == "cuda"
    opt = torch.optim.AdamW(params, lr=peak_lr, betas=(0.9, 0.95), weight_decay=0.1, **({"fused": True} if cuda else {}))
    start, step, tokens = time.time(), 0, 0
    while True:
        elapsed = time.time() - start
        if elapsed >= budget_s:
            break
        for group in opt.param_groups:
            group["lr"] = lr_at(elapsed / budget_s, peak_lr)
        x, y, weight, answer = batches.next(batch, args.device)
        with torch.autocast(args.device, dtype=torch.bfloat16, enabled=cuda):
            loss, parts = step_fn(x, y, weight, answer)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if balance:
            update_router_bias(model)
        step += 1
        tokens += x.numel()
        if step % 25 == 0 or step == 1:
            values = {k: round(float(v), 4) for k, v in parts.items()}
            curve.append({"phase": name, "step": step, "seconds": round(time.time() - T0, 1), "tokens": tokens, **values})
            log(f"{name} step {step} {values} lr {opt.param_groups[0]['lr']:.2e} "
                f"{tokens / (time.time() - start):,.0f} tokens/s")
    log(f"{name}: {step} steps, {tokens / 1e6:.1f} M tokens in {time.time() - start:.0f} s")
    return {"steps": step, "tokens": tokens, "seconds": round(time.time() - start, 1)}


def lm_loss(logits, y, weight, answer):
    """(weighted next-token loss, its parts: plain LM loss, answer tokens' loss and argmax accuracy)."""
    ce = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="none").view_as(weight)
    parts = {"lm": ce.mean()}
    if answer is not None:
        parts["answer_ce"] = ce[answer].mean()
        parts["answer_acc"] = (logits.detach().argmax(-1) == y)[answer].float().mean()
    return (ce * weight).sum() / weight.sum(), parts


def dense_phase(model, batches, args, curve):
    model.requires_grad_(True)
    for layer in model.layers:
        layer.self_attn.indexer.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]

    def step(x, y, weight, answer):
        return lm_loss(model(x, mode="dense"), y, weight, answer)
    return run_phase("dense", model, batches, args, args.dense_s, step, params, args.lr, args.batch, curve,
                     balance=True)


def warmup_phase(model, batches, args, curve):
    model.requires_grad_(False)
    for layer in model.layers:
        layer.self_attn.indexer.requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]

    def step(x, y, weight, answer):
        probes = dsa_model.Probes(want_attention=True, want_scores=True)
        logits = model(x, mode="dense", probes=probes)
        kl = sum(kl_to_indexer(probes.attention[i], probes.scores[i]) for i in probes.scores) / len(probes.scores)
        return kl, {"kl": kl, **lm_loss(logits.detach(), y, weight, answer)[1]}
    return run_phase("warmup", model, batches, args, args.warmup_s, step, params, args.indexer_lr,
                     args.indexer_batch, curve)


def sparse_phase(model, batches, args, curve):
    model.requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    pattern = "F" * len(model.layers)

    def step(x, y, weight, answer):
        probes = dsa_model.Probes(want_attention=True, want_scores=True)
        lm, parts = lm_loss(model(x, mode="sparse", pattern=pattern, probes=probes), y, weight, answer)
        kl = sum(kl_to_indexer(probes.attention[i], probes.scores[i], probes.selection[i])
                 for i in probes.scores) / len(probes.scores)
        return lm + kl, {**parts, "kl_selected": kl}
    return run_phase("sparse", model, batches, args, args.sparse_s, step, params, args.sparse_lr,
                     args.indexer_batch, curve, balance=True)


def distill_phase(model, batches, args, curve, pattern):
    model.requires_grad_(False)
    groups = groups_of(pattern)
    for f in groups:
        model.layers[f].self_attn.indexer.requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]

    def step(x, y, weight, answer):
        probes = dsa_model.Probes(want_attention=True, want_scores=True)
        logits = model(x, mode="sparse", pattern=pattern, probes=probes)
        kl = 0
        for f, served in groups.items():
            target = sum(probes.attention[i] for i in served) / len(served)
            kl = kl + kl_to_indexer(target, probes.scores[f])
        kl = kl / len(groups)
        return kl, {"kl_group": kl, **lm_loss(logits.detach(), y, weight, answer)[1]}
    return run_phase("distill", model, batches, args, args.distill_s, step, params, args.indexer_lr,
                     args.indexer_batch, curve)


# ---------------------------------------------------------------------------------------------
# Export and the transformers check
# ---------------------------------------------------------------------------------------------


def export(model, out_dir, data_dir, pattern=None):
    import safetensors.torch
    os.makedirs(out_dir, exist_ok=True)
    full = None if pattern is None else {i for i, k in enumerate(pattern) if k == "F"}
    tensors = {}
    for name, value in model.hf_state_dict(full).items():
        dtype = torch.float32 if name.endswith("e_score_correction_bias") else torch.bfloat16
        tensors[name] = value.detach().to(dtype).contiguous().cpu()
    safetensors.torch.save_file(dict(sorted(tensors.items())), os.path.join(out_dir, "model.safetensors"),
                                metadata={"format": "pt"})
    config = dict(CONFIG)
    if pattern is not None:
        config["index_topk_pattern"] = pattern
    with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    with open(os.path.join(data_dir, "tokenizer.json"), "rb") as src, \
            open(os.path.join(out_dir, "tokenizer.json"), "wb") as dst:
        dst.write(src.read())
    size = os.path.getsize(os.path.join(out_dir, "model.safetensors"))
    log(f"exported {out_dir}: {len(tensors)} tensors, {size / 1e6:.2f} MB")
    return size


def check_with_transformers(model_dir, ids, pattern):
    """Loads model_dir with transformers 5.17 and with this code; compares float32 logits."""
    import safetensors.torch
    from transformers import GlmMoeDsaForCausalLM
    hf = GlmMoeDsaForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager").cuda().eval()
    with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    ours = dsa_model.DsaModel(config).cuda().eval()
    ours.load_hf_state_dict(safetensors.torch.load_file(os.path.join(model_dir, "model.safetensors"), device="cuda"))
    ours.float()
    torch.backends.cuda.matmul.allow_tf32 = False
    with torch.no_grad():
        ref = hf(input_ids=ids[None], use_cache=False).logits[0].float()
        got = ours(ids[None], mode="sparse", pattern=pattern)[0].float()
    rel = float((got - ref).norm() / ref.norm())
    agree = float((got.argmax(-1) == ref.argmax(-1)).float().mean())
    result = {"model": model_dir, "tokens": int(ids.numel()), "indexer_types": list(hf.config.indexer_types),
              "relative_l2_logits": rel, "max_abs_logits": float((got - ref).abs().max()), "argmax_agreement": agree}
    log(f"transformers check {result}")
    return result


def write_log(out_dir, summary, curve):
    with open(os.path.join(out_dir, "train_log.json"), "w", encoding="utf-8") as f:
        json.dump({"summary": summary, "curve": curve}, f, indent=1)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data/train")
    parser.add_argument("--out", required=True)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--indexer-batch", type=int, default=4)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--sparse-lr", type=float, default=6e-4)
    parser.add_argument("--indexer-lr", type=float, default=2e-3)
    parser.add_argument("--retrieval-share", type=float, default=0.35, help="share of rows packed with retrieval documents")
    parser.add_argument("--retrieval-docs", type=int, default=16000, help="synthetic documents drawn (before the fit)")
    parser.add_argument("--answer-weight", type=float, default=5.0, help="LM-loss weight of an answer token")
    parser.add_argument("--dense-s", type=float, default=180)
    parser.add_argument("--warmup-s", type=float, default=25)
    parser.add_argument("--sparse-s", type=float, default=70)
    parser.add_argument("--distill-s", type=float, default=25)
    parser.add_argument("--distill-pattern", default="FSSS" * 4)
    parser.add_argument("--seed", type=int, default=20261122)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    torch.backends.cuda.matmul.allow_tf32 = True
    os.makedirs(args.out, exist_ok=True)
    stream, synthetic = load_data(args.data, args.seq_len, args.retrieval_docs, args.seed)
    batches = Batches(stream, synthetic, args.seq_len, args.retrieval_share, args.answer_weight, args.seed)
    model = dsa_model.DsaModel(CONFIG).cuda()
    model.init_weights()
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {n_params / 1e6:.2f} M parameters; {torch.cuda.get_device_name()}")

    curve, summary = [], {"args": vars(args), "config": CONFIG, "parameters": n_params, "phases": {}}
    summary["phases"]["dense"] = dense_phase(model, batches, args, curve)
    summary["phases"]["warmup"] = warmup_phase(model, batches, args, curve)
    summary["phases"]["sparse"] = sparse_phase(model, batches, args, curve)
    main_dir = os.path.join(args.out, "glm-dsa-trained")
    summary["bytes"] = export(model, main_dir, args.data)
    open(os.path.join(args.out, "main-exported"), "w").close()  # the device script starts the CPU work on it
    summary["phases"]["distill"] = distill_phase(model, batches, args, curve, args.distill_pattern)
    distill_dir = os.path.join(args.out, "glm-dsa-trained-distill-1of4")
    export(model, distill_dir, args.data, args.distill_pattern)

    summary["seconds"] = round(time.time() - T0, 1)
    summary["device"] = torch.cuda.get_device_name()
    summary["versions"] = {"torch": torch.__version__}
    write_log(args.out, summary, curve)
    check_ids = batches.next(1, "cuda")[0][0]
    summary["transformers_check"] = [check_with_transformers(main_dir, check_ids, "F" * CONFIG["num_hidden_layers"]),
                                     check_with_transformers(distill_dir, check_ids, args.distill_pattern)]
    write_log(args.out, summary, curve)
    log("done")


if __name__ == "__main__":
    main()
