"""Merges one run's outputs (cuda_kernel_bench, torch_baselines.py, e2e_transformers.py, cuda_e2e_bench)
into bench/results-style JSON and markdown: every kernel beside the ceilings and baselines measured in
the same run, and the engine beside transformers eager.

  python3 bench/cuda/make_report.py RAW_DIR OUT_PREFIX "COMMAND"   # writes OUT_PREFIX.json and .md"""
import datetime
import json
import os
import sys


def load(raw, name):
    path = os.path.join(raw, name)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def main():
    raw, prefix, command = sys.argv[1], sys.argv[2], sys.argv[3]
    kernels, torch_b = load(raw, "kernels.json"), load(raw, "torch.json")
    hf, full, freq4 = load(raw, "transformers.json"), load(raw, "engine_full.json"), load(raw, "engine_freq4.json")
    # Optional: the same benchmark built from an earlier commit (run_cuda_bench.sh: bin/cuda_e2e_bench_base).
    base = {"all_full": load(raw, "engine_base_full.json"), "freq4": load(raw, "engine_base_freq4.json")}
    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "command": command,
              "kernels": kernels, "torch": torch_b, "transformers": hf, "engine": {"all_full": full, "freq4": freq4},
              "engine_base": base}
    md = [f"# CUDA benchmark — {report['date']}", "", f"Command: `{command}`", ""]
    if kernels:
        gemm = kernels["ceilings"]["gemm_bf16_8192_tflops"]
        copy = kernels["ceilings"]["copy_gbps_read_plus_write"]
        md += [f"Device: {kernels['device']} ({kernels['sms']} SMs). Ceilings measured in this run: cuBLAS bf16 GEMM "
               f"8192³ **{gemm:.0f} TFLOP/s**, device copy **{copy:.0f} GB/s** (read + write)."
               + (f" PyTorch {torch_b['torch']} sees {torch_b['gemm_bf16_8192_tflops']:.0f} TFLOP/s and "
                  f"{torch_b['copy_gbps_read_plus_write']:.0f} GB/s." if torch_b else ""), ""]
        md += ["## Lightning indexer and top-k (2048 queries, 32 heads × 128, k = 2048)", "",
               "| context | q, keys | indexer ms | indexer TFLOP/s | % of GEMM | PyTorch matmul indexer TFLOP/s | top-k ms | "
               "torch.topk ms | top-k speedup | decode indexer+top-k ms | decode key GB/s | % of copy | "
               "decode indexer alone ms |",
               "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        # f32 rows (the earlier engine) and, when present, bf16 rows (the engine on CUDA) per context.
        for i, row in enumerate(kernels["indexer"]):
            t = torch_b["topk"][i]["ms"] if torch_b else float("nan")
            ti = torch_b["indexer"][i]["tflops"] if torch_b else float("nan")
            for r in [row] + ([kernels["indexer_bf16"][i]] if "indexer_bf16" in kernels else []):
                md.append(f"| {r['context']} | {r.get('q', 'f32')}, {r.get('keys', 'f32')} | {r['indexer_ms']:.2f} | "
                          f"{r['indexer_tflops']:.1f} | {100 * r['indexer_tflops'] / gemm:.0f}% | {ti:.1f} | "
                          f"{r['topk_ms']:.3f} | {t:.3f} | {t / r['topk_ms']:.2f}× | {r['decode_indexer_topk_ms']:.3f} | "
                          f"{r['decode_index_key_gbps']:.0f} | {100 * r['decode_index_key_gbps'] / copy:.0f}% | "
                          f"{r.get('decode_indexer_ms', float('nan')):.3f} |")
        for key in ("indexer_8x64", "indexer_bf16_8x64"):
            small = kernels.get(key)
            if small:
                md += ["", f"The 16-layer model's indexer ({small['heads']} heads × {small['dim']}, {small['queries']} "
                       f"queries at {small['context']}, q and keys {small.get('q', 'f32')}): {small['indexer_ms']:.2f} ms, "
                       f"{small['indexer_tflops']:.1f} TFLOP/s ({100 * small['indexer_tflops'] / gemm:.0f}% of GEMM); "
                       f"decode indexer + top-k {small['decode_indexer_topk_ms']:.3f} ms."]
        md += ["", "Indexer FLOPs count 2·H·D per visible (causal) key; the PyTorch baseline scores all keys. "
               "f32 keys are rounded to bf16 in shared memory, bf16 keys copied as they are. Decode key GB/s "
               "counts the key bytes read at the pool's element size (decode indexer + top-k time).", ""]
    if kernels and "sparse_mla" in kernels:
        md += ["## Sparse MLA (kv_lora 512 + rope 64, 2048 selected keys per token)", "",
               "| heads | context | q, pool | prefill tokens | prefill ms | prefill TFLOP/s | % of GEMM | decode batch | "
               "decode ms | latent GB/s | % of copy |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for key in ("sparse_mla", "sparse_mla_bf16"):
            for row in kernels.get(key, []):
                for j, d in enumerate(row["decode"]):
                    first = j == 0
                    md.append(f"| {row.get('heads', 64)} | {row['context']} | {row.get('q', 'f32')}, "
                              f"{row.get('pool', 'f32')} | {row['prefill_tokens']} | {row['prefill_ms']:.2f} | "
                              f"{row['prefill_tflops']:.1f} | {100 * row['prefill_tflops'] / gemm:.0f}% | "
                              if first else "| | | | | | | | ")
                    md[-1] += f"{d['batch']} | {d['ms']:.3f} | {d['latent_gbps']:.0f} | {100 * d['latent_gbps'] / copy:.0f}% |"
        md += ["", "Decode GB/s counts the latent rows read at the pool's element size (2048 × 576 × 4 bytes per "
               "token for f32, × 2 for bf16); the copy ceiling counts bytes read plus written.", ""]
    if hf and full:
        md += ["## End to end: the engine (--device cuda) vs transformers 5.17 eager, same GPU, same weights", "",
               f"Model: the brief's 16-layer random glm_moe_dsa, {hf['params'] / 1e6:.0f}M parameters, bf16.", "",
               "| pattern | what | transformers ms | engine ms | speedup |", "| --- | --- | --- | --- | --- |"]
        for name, ours in (("all_full", full), ("freq4", freq4)):
            if ours is None:
                continue
            theirs = hf["runs"][name]
            for a, b in zip(theirs["prefill"], ours["prefill"]):
                md.append(f"| {name} | prefill {a['tokens']} | {a['ms']:.1f} | {b['ms']:.1f} | {a['ms'] / b['ms']:.1f}× |")
            a = theirs["decode"]
            rows = [("decode ms/token at {}", ours["decode"])]
            if "decode_eager" in ours:  # the same binary and process, graphs off
                rows = [("decode ms/token at {}, op by op", ours["decode_eager"]),
                        ("decode ms/token at {}, CUDA graphs", ours["decode"])]
            if base[name] is not None:
                rows.insert(0, ("decode ms/token at {}, earlier build (sync uploads)", base[name]["decode"]))
            for what, b in rows:
                md.append(f"| {name} | {what.format(a['context'])} | {a['ms_per_token']:.2f} | "
                          f"{b['ms_per_token']:.3f} | {a['ms_per_token'] / b['ms_per_token']:.1f}× |")
        md.append("")
    with open(prefix + ".json", "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
        f.write("\n")
    with open(prefix + ".md", "w", encoding="utf-8") as f:
        f.write("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
