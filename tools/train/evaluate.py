#!/usr/bin/env python3
"""Quality of IndexCache layer patterns on the trained model: perplexity, retrieval, top-k overlap.

For each configuration NAME=MODEL_DIR:PATTERN (PATTERN: one F/S per layer), with the PyTorch model of
tools/train/dsa_model.py in float32 (checked against transformers by train.py), on a CUDA GPU when
there is one:
  perplexity  data/test.txt (held out), non-overlapping windows of each --contexts length
  retrieval   data/retrieval_test.jsonl: a case is right when every answer token is the argmax after
              the prompt (exactly what greedy decoding would produce), per task and context length
              (prompt + answer at most that many tokens); cases run in batches, right-padded, which
              changes nothing before the padding in a causal model
and once, on the first configuration (all-Full): the cross-layer top-k overlap, the share of the
selected keys two layers have in common (rows t >= index_topk, where the selection is really sparse),
averaged over held-out windows of the training context, as JSON and a heatmap PNG.

    python3 tools/train/evaluate.py --out results.json --heatmap overlap.png \
        all-full=models/glm-dsa-trained:FFFFFFFFFFFFFFFF uniform-1/4=models/glm-dsa-trained:FSSSFSSSFSSSFSSS
"""

import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import dsa_model  # noqa: E402

T0 = time.time()


def log(msg):
    print(f"[evaluate {time.time() - T0:6.1f}s] {msg}", flush=True)


def load(model_dir, device):
    import safetensors.torch
    with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    model = dsa_model.DsaModel(config)
    model.load_hf_state_dict(safetensors.torch.load_file(os.path.join(model_dir, "model.safetensors")))
    return model.float().to(device).eval()


BATCH = 8


def perplexity(model, ids, pattern, context, max_windows, device):
    n = min(max_windows, (len(ids) - 1) // context)
    total, count = 0.0, 0
    for w in range(0, n, BATCH):
        x = torch.stack([torch.tensor(ids[v * context:(v + 1) * context + 1]) for v in range(w, min(n, w + BATCH))])
        x = x.to(device)
        logits = model(x[:, :-1], mode="sparse", pattern=pattern)
        total += float(F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten(), reduction="sum"))
        count += context * x.shape[0]
    return {"context": context, "windows": n, "tokens": count, "ppl": float(torch.tensor(total / count).exp())}


def retrieval(model, tok, cases, pattern, device):
    pad = tok.token_to_id("<|endoftext|>")
    by_key = {}
    for case in cases:
        key = f"{case['task']}/{case['context']}"
        entry = by_key.setdefault(key, {"task": case["task"], "context": case["context"], "cases": 0, "right": 0,
                                        "max_tokens": 0, "pending": []})
        entry["pending"].append((tok.encode(case["prompt"]).ids, tok.encode(case["answer"]).ids))
    for entry in by_key.values():
        pending = entry.pop("pending")
        for b in range(0, len(pending), BATCH):
            group = pending[b:b + BATCH]
            width = max(len(p) + len(a) for p, a in group)
            x = torch.full((len(group), width), pad, dtype=torch.int64)
            for r, (p, a) in enumerate(group):
                x[r, :len(p) + len(a)] = torch.tensor(p + a)
            predicted = model(x.to(device), mode="sparse", pattern=pattern).argmax(-1).cpu()
            for r, (p, a) in enumerate(group):
                entry["right"] += bool((predicted[r, len(p) - 1:len(p) + len(a) - 1] == x[r, len(p):len(p) + len(a)]).all())
                entry["max_tokens"] = max(entry["max_tokens"], len(p) + len(a))
            entry["cases"] += len(group)
        entry["accuracy"] = entry["right"] / entry["cases"]
    return sorted(by_key.values(), key=lambda e: (e["task"], e["context"]))


def topk_overlap(model, ids, context, windows, device):
    """[L][L] mean share of layer i's top-k keys that layer j also selects (all-Full model)."""
    n_layers = len(model.layers)
    k = model.c["index_topk"]
    acc = torch.zeros(n_layers, n_layers, dtype=torch.float64)
    for w in range(windows):
        x = torch.tensor(ids[w * context:(w + 1) * context], device=device)
        probes = dsa_model.Probes()
        model(x[None], mode="sparse", pattern="F" * n_layers, probes=probes)
        sel = torch.stack([probes.selection[i][0, k:].float() for i in range(n_layers)])  # [L, T-k, T]
        inter = torch.einsum("its,jts->ij", sel, sel) / (sel.shape[1] * k)
        acc += inter.double().cpu()
    return (acc / windows).tolist()


def draw_heatmap(matrix, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    n = len(matrix)
    fig, ax = plt.subplots(figsize=(8.5, 7))
    im = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{matrix[i][j] * 100:.0f}", ha="center", va="center", fontsize=6,
                    color="black" if matrix[i][j] > 0.6 else "white")
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xlabel("layer")
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, label="share of top-k keys in common")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="+", help="NAME=MODEL_DIR:PATTERN")
    parser.add_argument("--test", default="data/test.txt")
    parser.add_argument("--retrieval", default="data/retrieval_test.jsonl")
    parser.add_argument("--contexts", default="512,1024,2048")
    parser.add_argument("--max-windows", type=int, default=64)
    parser.add_argument("--overlap-windows", type=int, default=16)
    parser.add_argument("--out", required=True)
    parser.add_argument("--heatmap")
    args = parser.parse_args()

    import tokenizers
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = False
    with open(args.test, encoding="utf-8") as f:
        test_text = f.read()
    with open(args.retrieval, encoding="utf-8") as f:
        cases = [json.loads(line) for line in f]
    contexts = [int(c) for c in args.contexts.split(",")]
    results = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
               "configs": []}
    models = {}
    for spec in args.configs:
        name, rest = spec.split("=", 1)
        model_dir, pattern = rest.rsplit(":", 1)
        if model_dir not in models:
            models[model_dir] = load(model_dir, device)
        model = models[model_dir]
        if len(pattern) != len(model.layers) or pattern[0] != "F" or set(pattern) - {"F", "S"}:
            raise SystemExit(f"error: {name}: pattern {pattern!r} is not {len(model.layers)} F/S starting with F")
        tok = tokenizers.Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
        ids = tok.encode(test_text).ids
        with torch.no_grad():
            entry = {"name": name, "model": model_dir, "pattern": pattern, "full_layers": pattern.count("F"),
                     "perplexity": [perplexity(model, ids, pattern, c, args.max_windows, device) for c in contexts],
                     "retrieval": retrieval(model, tok, cases, pattern, device)}
            if not results["configs"] and args.heatmap:
                results["overlap"] = {"model": model_dir, "windows": args.overlap_windows, "context": max(contexts),
                                      "matrix": topk_overlap(model, ids, max(contexts), args.overlap_windows, device)}
                draw_heatmap(results["overlap"]["matrix"], args.heatmap,
                             f"Cross-layer top-k overlap, {os.path.basename(model_dir)} "
                             f"(top-{model.c['index_topk']} of {max(contexts)} tokens, held-out text)")
        results["configs"].append(entry)
        log(f"{name} {pattern}: ppl {[round(p['ppl'], 3) for p in entry['perplexity']]} retrieval "
            f"{[(r['task'], r['context'], r['accuracy']) for r in entry['retrieval']]}")
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)
    log("done")


if __name__ == "__main__":
    main()
