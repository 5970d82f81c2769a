"""PyTorch baselines for the CUDA kernel benchmark, run in the same session on the same GPU:
torch.topk (k=2048, sorted, as the engine needs) on the same [2048 x context] f32 score shapes, a
matmul-based PyTorch lightning indexer (2048 queries x context keys x 32 heads x 128, bf16), and the
card's bf16 GEMM rate, copy bandwidth and read bandwidth as PyTorch sees them. Prints one JSON object."""
import json
import sys

import torch


def time_ms(fn, warmup=2, reps=5):
    for _ in range(warmup):
        fn()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    times.sort()
    return times[len(times) // 2]


def main():
    topk_only = sys.argv[1:] == ["--topk-only"]  # skip the matmul indexer (bench/cuda/run_topk_bench.sh)
    dev = torch.device("cuda")
    out = {"torch": torch.__version__, "device": torch.cuda.get_device_name(0)}
    n = 8192
    a = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    ms = time_ms(lambda: a @ b, 3, 10)
    out["gemm_bf16_8192_tflops"] = 2 * n**3 / (ms * 1e-3) / 1e12
    del a, b
    src = torch.empty(2 << 30, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), 2, 10)
    out["copy_gbps_read_plus_write"] = 2 * src.numel() / (ms * 1e-3) / 1e9
    del src, dst
    # Read-only bandwidth (a sum over 1 GiB of f32): the ceiling for kernels that read and write little.
    x = torch.randn(1 << 28, device=dev)
    ms = time_ms(lambda: x.sum(), 2, 10)
    out["read_gbps"] = x.numel() * 4 / (ms * 1e-3) / 1e9
    del x
    out["topk"] = []
    out["indexer"] = []
    queries, heads, dim, k = 2048, 32, 128, 2048
    for context in (8192, 32768, 65536, 131072):
        scores = torch.randn(queries, context, device=dev)
        ms = time_ms(lambda: torch.topk(scores, k, dim=1, sorted=True))
        out["topk"].append({"rows": queries, "context": context, "ms": ms})
        del scores
        if topk_only:
            continue
        q = torch.randn(queries, heads, dim, device=dev, dtype=torch.bfloat16)
        keys = torch.randn(context, dim, device=dev, dtype=torch.bfloat16)
        w = torch.randn(queries, heads, device=dev, dtype=torch.bfloat16)

        def indexer():
            logits = torch.einsum("qhd,kd->qhk", q, keys).relu_()
            return torch.einsum("qhk,qh->qk", logits, w)

        ms = time_ms(indexer, 1, 3)
        # Same FLOP count convention as the C++ benchmark, but over all keys (no causal saving).
        out["indexer"].append({"queries": queries, "context": context, "ms": ms,
                               "tflops": 2 * heads * dim * queries * context / (ms * 1e-3) / 1e12})
        del q, keys, w
        torch.cuda.empty_cache()
    scores = torch.randn(4096, 131072, device=dev)
    out["topk_4096x131072_ms"] = time_ms(lambda: torch.topk(scores, k, dim=1, sorted=True))
    json.dump(out, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
