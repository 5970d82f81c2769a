"""Where a decode step's GPU time goes: per-kernel durations of cuda_e2e_bench's decode steps, from an
Nsight Compute CSV, grouped by what the kernel does.

  ncu --clock-control none --cache-control none --metrics gpu__time_duration.sum --csv --page raw \\
      --log-file ncu.csv cuda_e2e_bench --model DIR --prefill 2048 --reps 1 --decode-steps 4
  python3 bench/cuda/decode_kernel_profile.py ncu.csv > profile.md

cuda_e2e_bench runs its prefills, then decode op by op, then decode replayed from CUDA graphs (ncu
times each kernel node of a replay on its own). A forward pass starts with EmbeddingKernel; a pass of
at most 64 rows is a decode step. Decode steps before the second long prefill are the op-by-op ones,
those after it the replayed ones; the first step of each group (warm-up, and the op-by-op run that
precedes a recording) is dropped. Durations are each kernel alone on the GPU: a replay adds about a
microsecond of dispatch per kernel, an op-by-op step its host launch time."""
import collections
import csv
import statistics
import sys

# (category, substrings of the kernel name), first match wins.
CATEGORIES = [
    ("indexer logits", ("IndexerLogits",)),
    ("top-k", ("RowTopK",)),
    ("sparse MLA", ("SparseMla", "MergeSplits")),
    ("MoE route + bucketing", ("RouteKernel", "CountKernel", "OffsetsKernel", "ScatterKernel", "GatherCast")),
    ("MoE expert GEMMs + combine", ("GroupedGemv", "SiluMulCast", "CombineKernel")),
    ("cuBLAS GEMMs", ("nvjet", "gemm", "Gemm", "cutlass", "sm90_", "splitKreduce")),
    ("bf16 casts before GEMMs", ("CastKernel",)),
    ("norms", ("RmsNorm", "LayerNorm")),
    ("RoPE", ("Rope",)),
    ("residual adds, SwiGLU, fills", ("AddKernel", "SiluMulKernel", "FillKernel")),
    ("cache writes, gathers", ("GatherBytes",)),
    ("embedding, argmax", ("Embedding", "ArgMax")),
]


def category(name):
    for label, keys in CATEGORIES:
        if any(k in name for k in keys):
            return label
    return "other: " + name.split("(")[0][-40:]


def grid_x(text):
    return int(text.strip("()").split(",")[0])


def main():
    rows = [r for r in csv.DictReader(line for line in open(sys.argv[1], encoding="utf-8") if not line.startswith("=="))]
    passes, current = [], None
    for r in rows:
        if not r["ID"].isdigit():
            continue  # the units row
        name = r["Kernel Name"]
        if "EmbeddingKernel" in name:
            current = {"rows": grid_x(r["Grid Size"]), "kernels": []}
            passes.append(current)
        if current is not None:
            current["kernels"].append((name, float(r["gpu__time_duration.sum"].replace(",", "")) / 1e3))  # µs
    groups, group, long_prefills = [], [], 0
    for p in passes:
        if p["rows"] > 64:
            if p["rows"] >= 8192:
                long_prefills += 1
                if group:
                    groups.append(group)
                group = []
            continue
        if long_prefills:
            group.append(p)
    if group:
        groups.append(group)
    if not groups:
        sys.exit("no decode steps after a prefill of >= 8192 tokens in " + sys.argv[1])
    out = ["| category | " + " | ".join(f"{g} µs/step" for g in ("op by op", "CUDA graph")[: len(groups)]) + " | kernels/step |",
           "| --- | " + " | ".join("---" for _ in groups) + " | --- |"]
    tables = []
    for g in groups:
        steps = g[1:] if len(g) > 1 else g
        per_cat = collections.defaultdict(list)
        counts = collections.Counter()
        for p in steps:
            sums = collections.Counter()
            for name, us in p["kernels"]:
                sums[category(name)] += us
            for c, us in sums.items():
                per_cat[c].append(us)
        for name, _ in steps[-1]["kernels"]:
            counts[category(name)] += 1
        totals = [sum(us for _, us in p["kernels"]) for p in steps]
        tables.append(({c: statistics.median(v) for c, v in per_cat.items()}, counts, statistics.median(totals),
                       len(steps[-1]["kernels"]), len(steps)))
    cats = sorted(tables[-1][0], key=lambda c: -tables[-1][0][c])
    for c in cats:
        out.append(f"| {c} | " + " | ".join(f"{t[0].get(c, 0):.1f}" for t in tables) + f" | {tables[-1][1][c]} |")
    out.append("| **sum of kernel times** | " + " | ".join(f"**{t[2]:.1f}**" for t in tables) + f" | {tables[-1][3]} |")
    print("\n".join(out))
    print(f"\nMedian over {', '.join(str(t[4]) for t in tables)} decode steps of {tables[-1][3]} kernels; "
          f"batch rows {groups[-1][-1]['rows']}.")


if __name__ == "__main__":
    main()
