"""Merges one run of `cuda_kernel_bench --topk-only` and torch_baselines.py into bench/results-style
JSON and markdown: the radix top-k beside torch.topk on the same shapes, and beside the time it takes
to read the scores once at the read bandwidth measured in the same run.

  python3 bench/cuda/topk_report.py RAW_DIR OUT_PREFIX "COMMAND"   # writes OUT_PREFIX.json and .md"""
import datetime
import json
import os
import sys


def main():
    raw, prefix, command = sys.argv[1], sys.argv[2], sys.argv[3]
    with open(os.path.join(raw, "topk.json"), encoding="utf-8") as f:
        ours = json.load(f)
    with open(os.path.join(raw, "torch.json"), encoding="utf-8") as f:
        torch_b = json.load(f)
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    read = torch_b["read_gbps"]
    copy = ours["ceilings"]["copy_gbps_read_plus_write"]
    torch_ms = {t["context"]: t["ms"] for t in torch_b["topk"] if t["rows"] == 2048}
    md = [f"# Radix top-k — {date}", "", f"Command: `{command}`", "",
          f"Device: {ours['device']} ({ours['sms']} SMs); PyTorch {torch_b['torch']}. Measured in this run: read "
          f"bandwidth **{read:.0f} GB/s** (torch sum over 1 GiB of f32), device copy {copy:.0f} GB/s (read + write).",
          "", "k = 2048 over 2048 rows of N(0, 1) f32 scores, best first (sorted), as torch_baselines.py calls "
          "`torch.topk(scores, 2048, dim=1, sorted=True)`. *full*: every row of the context's length (torch's "
          "shape); *causal*: the same scores with a prefill chunk's row lengths (context − 2047 … context); "
          "*decode*: one full row. Each of ours is two medians of 20 runs; the bound reads every visible score "
          "once at the read bandwidth above.", "",
          "| context | torch.topk ms | full ms | speedup | read-once bound ms | × bound | full GB/s | causal ms "
          "| causal × bound | decode ms |",
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    rows = []
    for t in ours["topk"]:
        c, n = t["context"], t["rows"]
        full_ms, causal_ms = min(t["full"]["ms"]), min(t["causal"]["ms"])
        full_bound = n * c * 4 / (read * 1e9) * 1e3
        causal_bound = sum(c - n + q + 1 for q in range(n)) * 4 / (read * 1e9) * 1e3
        row = {"context": c, "rows": n, "torch_ms": torch_ms[c], "full_ms": t["full"]["ms"],
               "speedup": torch_ms[c] / full_ms, "full_bound_ms": full_bound, "causal_ms": t["causal"]["ms"],
               "causal_bound_ms": causal_bound, "decode_ms": t["decode"]["ms"]}
        rows.append(row)
        md.append(f"| {c} | {torch_ms[c]:.3f} | {t['full']['ms'][0]:.3f} / {t['full']['ms'][1]:.3f} | "
                  f"**{row['speedup']:.2f}×** | {full_bound:.3f} | {full_ms / full_bound:.2f} | "
                  f"{t['full']['read_gbps']:.0f} | {t['causal']['ms'][0]:.3f} / {t['causal']['ms'][1]:.3f} | "
                  f"{causal_ms / causal_bound:.2f} | {t['decode']['ms'][0]:.4f} / {t['decode']['ms'][1]:.4f} |")
    if "topk_4096x131072_ms" in torch_b:
        md += ["", f"torch.topk on 4096 × 131072: {torch_b['topk_4096x131072_ms']:.3f} ms."]
    report = {"date": date, "command": command, "kernels": ours, "torch": torch_b, "table": rows}
    with open(prefix + ".json", "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
        f.write("\n")
    with open(prefix + ".md", "w", encoding="utf-8") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
