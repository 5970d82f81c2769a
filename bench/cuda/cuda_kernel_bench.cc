// The CUDA kernel benchmark at GLM-5's DSA dimensions (indexer 32 heads × 128, index_topk 2048; MLA
// kv_lora 512, rope 64, 64 heads) over 8K–128K context. In one process it first measures the card's
// ceilings — cuBLAS bf16 GEMM (8192³) and a device-to-device copy — then times, with CUDA events,
// the backend's own kernels exactly as the engine calls them: the indexer logits (prefill chunk and
// decode), the radix top-k, and sparse MLA for prefill and decode (also at the paper's 20 heads), each
// with bf16 queries and bf16 paged caches (the engine on CUDA) and with f32 ones (the earlier engine,
// kept as the "before"). Prints
// one JSON object on stdout; bench/cuda/run_cuda_bench.sh adds torch's baselines from the same run and
// writes the report. `--sparse-mla-only` skips the indexer and top-k; `--topk-only` times the top-k
// alone on torch.topk's shapes instead (bench/cuda/run_topk_bench.sh).
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <functional>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "bench/cuda/cuda_timing.h"
#include "common/backend/cuda/cuda_backend.h"
#include "common/backend/cuda/cuda_kernels.h"
#include "nlohmann/json.hpp"

namespace indexcache::bench {
namespace {

constexpr int kIndexHeads = 32, kIndexDim = 128, kTopK = 2048;
constexpr int kHeads = 64, kLatent = 512, kRope = 64;
constexpr int kBlock = 64;  // cache block size of the paged layouts

// A device array of `count` elements of T filled with N(0, 1) floats converted to T.
template <typename T>
T* DeviceRandom(size_t count, uint32_t seed) {
  std::vector<float> host(count);
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist;
  for (float& v : host) v = dist(rng);
  T* d = nullptr;
  CheckCuda(cudaMalloc(&d, count * sizeof(T)), "alloc");
  if constexpr (std::is_same_v<T, float>) {
    CheckCuda(cudaMemcpy(d, host.data(), count * sizeof(float), cudaMemcpyHostToDevice), "upload");
  } else {
    std::vector<T> conv(count);
    for (size_t i = 0; i < count; ++i) conv[i] = static_cast<T>(host[i]);
    CheckCuda(cudaMemcpy(d, conv.data(), count * sizeof(T), cudaMemcpyHostToDevice), "upload");
  }
  return d;
}

int32_t* DeviceInts(const std::vector<int32_t>& host) {
  int32_t* d = nullptr;
  CheckCuda(cudaMalloc(&d, host.size() * sizeof(int32_t)), "alloc");
  CheckCuda(cudaMemcpy(d, host.data(), host.size() * sizeof(int32_t), cudaMemcpyHostToDevice), "upload");
  return d;
}

// `sequences` sequences of `context` tokens with `queries` query tokens at the last positions of
// each. Every sequence's block table is a different shuffle of the same pool blocks (as a long-running
// pool would be scattered), so the pool holds one context's rows however many sequences there are.
struct Layout {
  int32_t* seq;
  int32_t* pos;
  int32_t* table;
  int32_t max_blocks;
  cuda::PagedRows rows;
  BatchLayout batch;
};

Layout MakeLayout(int32_t context, int32_t queries, int32_t sequences = 1) {
  Layout l{};
  l.max_blocks = (context + kBlock - 1) / kBlock;
  std::vector<int32_t> table;
  std::mt19937 rng(5);
  for (int32_t s = 0; s < sequences; ++s) {
    std::vector<int32_t> blocks(l.max_blocks);
    std::iota(blocks.begin(), blocks.end(), 0);
    std::shuffle(blocks.begin(), blocks.end(), rng);
    table.insert(table.end(), blocks.begin(), blocks.end());
  }
  std::vector<int32_t> seq, pos;
  for (int32_t s = 0; s < sequences; ++s) {
    for (int32_t q = 0; q < queries; ++q) {
      seq.push_back(s);
      pos.push_back(context - queries + q);
    }
  }
  l.seq = DeviceInts(seq);
  l.pos = DeviceInts(pos);
  l.table = DeviceInts(table);
  l.rows = cuda::PagedRows{l.seq, l.pos, l.table, l.max_blocks, kBlock};
  const int64_t n = static_cast<int64_t>(seq.size());
  l.batch = BatchLayout{Tensor::Matrix(l.seq, DType::kI32, n, 1), Tensor::Matrix(l.pos, DType::kI32, n, 1), Tensor{},
                        Tensor::Matrix(l.table, DType::kI32, sequences, l.max_blocks), kBlock, context};
  return l;
}

void FreeLayout(Layout& l) {
  cudaFree(l.seq);
  cudaFree(l.pos);
  cudaFree(l.table);
}

nlohmann::json Ceilings(cudaStream_t stream, cublasHandle_t cublas) {
  nlohmann::json out;
  const int n = 8192;
  auto* a = DeviceRandom<__nv_bfloat16>(size_t{n} * n, 1);
  auto* b = DeviceRandom<__nv_bfloat16>(size_t{n} * n, 2);
  float* c = nullptr;
  CheckCuda(cudaMalloc(&c, sizeof(float) * n * n), "alloc");
  const float alpha = 1, beta = 0;
  auto gemm = [&] {
    cublasGemmEx(cublas, CUBLAS_OP_T, CUBLAS_OP_N, n, n, n, &alpha, a, CUDA_R_16BF, n, b, CUDA_R_16BF, n, &beta, c,
                 CUDA_R_32F, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  };
  const double gemm_ms = EventMs(stream, 3, 10, gemm);
  out["gemm_bf16_8192_tflops"] = 2.0 * n * n * double(n) / (gemm_ms * 1e-3) / 1e12;
  cudaFree(a);
  cudaFree(b);
  cudaFree(c);
  out["copy_gbps_read_plus_write"] = CopyGbPerS(stream, size_t{2} << 30);
  return out;
}

// N(0, 1) values as F32 or BF16 (`dtype`), freed by cudaFree.
void* DeviceRandomAs(DType dtype, size_t count, uint32_t seed) {
  return dtype == DType::kBF16 ? static_cast<void*>(DeviceRandom<__nv_bfloat16>(count, seed))
                               : static_cast<void*>(DeviceRandom<float>(count, seed));
}

const char* NameOf(DType dtype) { return dtype == DType::kBF16 ? "bf16" : "f32"; }

// Indexer logits + top-k for a prefill chunk of `queries` tokens ending at `context`, and for one
// decode token, with queries and head weights as `act` and the index-key pool as `cache`; FLOPs
// count the q·k products (2·H·D per visible key) as the brief's baseline does.
nlohmann::json IndexerAndTopK(cudaStream_t stream, DType act, DType cache, int32_t context, int32_t queries,
                              int32_t heads = kIndexHeads, int32_t dim = kIndexDim) {
  nlohmann::json out;
  out["context"] = context;
  out["queries"] = queries;
  out["heads"] = heads;
  out["dim"] = dim;
  out["q"] = NameOf(act);
  out["keys"] = NameOf(cache);
  Layout l = MakeLayout(context, queries);
  const int64_t slots = int64_t{l.max_blocks} * kBlock;
  void* keys = DeviceRandomAs(cache, slots * dim, 3);
  void* q = DeviceRandomAs(act, int64_t{queries} * heads * dim, 4);
  void* w = DeviceRandomAs(act, int64_t{queries} * heads, 5);
  float* logits = nullptr;
  int32_t* topk = nullptr;
  CheckCuda(cudaMalloc(&logits, sizeof(float) * queries * int64_t{context}), "alloc");
  CheckCuda(cudaMalloc(&topk, sizeof(int32_t) * queries * int64_t{kTopK}), "alloc");
  const Tensor tq = Tensor::Matrix(q, act, queries, heads * dim);
  const Tensor tw = Tensor::Matrix(w, act, queries, heads);
  const Tensor tk = Tensor::Matrix(keys, cache, slots, dim);
  const Tensor tl = Tensor::Matrix(logits, DType::kF32, queries, context);
  const Tensor tt = Tensor::Matrix(topk, DType::kI32, queries, kTopK);
  auto run_logits = [&] {
    const std::string e = cuda::IndexerLogits(tq, tw, heads, tk, l.rows, context, 0.088f, tl, stream);
    if (!e.empty()) Die(e);
  };
  auto run_topk = [&] {
    const std::string e = cuda::RowTopK(tl, l.pos, tt, stream);
    if (!e.empty()) Die(e);
  };
  const double logits_ms = EventMs(stream, 2, 5, run_logits);
  const double topk_ms = EventMs(stream, 2, 5, run_topk);
  double visible = 0;
  for (int32_t i = 0; i < queries; ++i) visible += context - queries + i + 1;
  out["indexer_ms"] = logits_ms;
  out["indexer_tflops"] = 2.0 * heads * dim * visible / (logits_ms * 1e-3) / 1e12;
  out["topk_ms"] = topk_ms;
  out["topk_rows"] = queries;
  // Decode: one query over the whole context (memory-bound: every key is read once).
  const Tensor dq = tq.Rows(queries - 1, 1), dw = tw.Rows(queries - 1, 1);
  cuda::PagedRows last = l.rows;
  last.token_seq += queries - 1;
  last.token_pos += queries - 1;
  auto decode_logits = [&] {
    const std::string e = cuda::IndexerLogits(dq, dw, heads, tk, last, context, 0.088f, tl.Rows(0, 1), stream);
    if (!e.empty()) Die(e);
  };
  const double decode_ms = EventMs(stream, 3, 10, [&] {
    decode_logits();
    const std::string e = cuda::RowTopK(tl.Rows(0, 1), last.token_pos, tt.Rows(0, 1), stream);
    if (!e.empty()) Die(e);
  });
  out["decode_indexer_ms"] = EventMs(stream, 3, 10, decode_logits);
  out["decode_indexer_topk_ms"] = decode_ms;
  out["decode_index_key_gbps"] = double(context) * dim * DTypeSize(cache) / (decode_ms * 1e-3) / 1e9;
  cudaFree(keys);
  cudaFree(q);
  cudaFree(w);
  cudaFree(logits);
  cudaFree(topk);
  FreeLayout(l);
  return out;
}

// The top-k alone on torch's shapes: `rows` rows of N(0, 1) scores (the first `context` columns of
// `scores`, rows `stride` apart), every row of full length (the rows torch.topk sees in
// torch_baselines.py), the same scores with the causal lengths of a prefill chunk at the end of the
// context, and one decode row. Each shape is timed twice, so the spread between the two medians shows
// the noise; bytes count each visible score read once.
nlohmann::json TopKAlone(cudaStream_t stream, float* scores, int64_t stride, int32_t context, int32_t rows) {
  nlohmann::json out;
  out["context"] = context;
  out["rows"] = rows;
  out["k"] = kTopK;
  int32_t* picks = nullptr;
  CheckCuda(cudaMalloc(&picks, sizeof(int32_t) * rows * int64_t{kTopK}), "alloc");
  std::vector<int32_t> full(rows, context - 1), causal(rows);
  for (int32_t q = 0; q < rows; ++q) causal[q] = context - rows + q;
  int32_t* full_pos = DeviceInts(full);
  int32_t* causal_pos = DeviceInts(causal);
  const Tensor tl = Tensor::Matrix(scores, DType::kF32, rows, stride).Cols(0, context);
  const Tensor tt = Tensor::Matrix(picks, DType::kI32, rows, kTopK);
  auto time = [&](const int32_t* pos, int64_t n, double visible) {
    auto run = [&] {
      const std::string e = cuda::RowTopK(tl.Rows(0, n), pos, tt.Rows(0, n), stream);
      if (!e.empty()) Die(e);
    };
    const double first = EventMs(stream, 3, 20, run), second = EventMs(stream, 3, 20, run);
    return nlohmann::json{{"ms", {first, second}},
                          {"read_gbps", visible * sizeof(float) / (std::min(first, second) * 1e-3) / 1e9}};
  };
  double causal_visible = 0;
  for (int32_t p : causal) causal_visible += p + 1;
  out["full"] = time(full_pos, rows, double(rows) * context);
  out["causal"] = time(causal_pos, rows, causal_visible);
  out["decode"] = time(full_pos, 1, context);
  cudaFree(picks);
  cudaFree(full_pos);
  cudaFree(causal_pos);
  return out;
}

// Sparse MLA over 2048 selected keys per token with `heads` heads (64: GLM-5; 20: the paper's
// GLM-4.7-Flash shape), queries and output as `act`, the latent pool as `cache`: a prefill chunk
// (TFLOP/s) and decode batches (GB/s of latent rows read, at the cache's element size).
nlohmann::json SparseMla(CudaBackend& be, DType act, DType cache, int32_t heads, int32_t context,
                         int32_t prefill_tokens, const std::vector<int32_t>& batches) {
  nlohmann::json out;
  out["heads"] = heads;
  out["context"] = context;
  out["q"] = NameOf(act);
  out["pool"] = NameOf(cache);
  const int32_t width = kLatent + kRope;
  const int32_t max_batch = *std::max_element(batches.begin(), batches.end());
  const int32_t sequences = std::max(1, max_batch);
  Layout big = MakeLayout(context, 1, sequences);  // decode: one token per sequence
  const int64_t slots = int64_t{big.max_blocks} * kBlock;
  void* pool = DeviceRandomAs(cache, slots * width, 6);
  const int32_t n_max = std::max(prefill_tokens, max_batch);
  void* ql = DeviceRandomAs(act, int64_t{n_max} * heads * kLatent, 7);
  void* qr = DeviceRandomAs(act, int64_t{n_max} * heads * kRope, 8);
  void* o = nullptr;
  CheckCuda(cudaMalloc(&o, DTypeSize(act) * n_max * heads * kLatent), "alloc");
  // Each token attends to 2048 random earlier positions (repeats allowed: the cost is the same).
  std::vector<int32_t> idx(static_cast<size_t>(n_max) * kTopK);
  std::mt19937 rng(9);
  for (int32_t r = 0; r < n_max; ++r) {
    for (int32_t j = 0; j < kTopK; ++j) idx[static_cast<size_t>(r) * kTopK + j] = static_cast<int32_t>(rng() % (context - prefill_tokens));
  }
  int32_t* didx = DeviceInts(idx);
  const Tensor tpool = Tensor::Matrix(pool, cache, slots, width);
  auto run = [&](int32_t n, const BatchLayout& batch) {
    be.SparseMlaAttention(Tensor::Matrix(ql, act, n, heads * kLatent), Tensor::Matrix(qr, act, n, heads * kRope),
                          heads, tpool, batch, Tensor::Matrix(didx, DType::kI32, n, kTopK), 0.04f,
                          Tensor::Matrix(o, act, n, heads * kLatent));
  };
  Layout prefill = MakeLayout(context, prefill_tokens);
  const double prefill_ms = EventMs(be.stream(), 2, 5, [&] { run(prefill_tokens, prefill.batch); });
  const double flops = 2.0 * prefill_tokens * heads * kTopK * double(width + kLatent);
  out["prefill_tokens"] = prefill_tokens;
  out["prefill_ms"] = prefill_ms;
  out["prefill_tflops"] = flops / (prefill_ms * 1e-3) / 1e12;
  nlohmann::json decode = nlohmann::json::array();
  for (int32_t b : batches) {
    BatchLayout batch = big.batch;
    batch.token_seq = batch.token_seq.Rows(0, b);
    batch.token_pos = batch.token_pos.Rows(0, b);
    const double ms = EventMs(be.stream(), 3, 10, [&] { run(b, batch); });
    const double bytes = double(b) * kTopK * width * DTypeSize(cache);
    decode.push_back({{"batch", b}, {"ms", ms}, {"latent_gbps", bytes / (ms * 1e-3) / 1e9},
                      {"tflops", 2.0 * b * heads * kTopK * double(width + kLatent) / (ms * 1e-3) / 1e12}});
  }
  out["decode"] = decode;
  if (!be.Synchronize().ok()) Die(be.Synchronize().ToString());
  cudaFree(pool);
  cudaFree(ql);
  cudaFree(qr);
  cudaFree(o);
  cudaFree(didx);
  FreeLayout(big);
  FreeLayout(prefill);
  return out;
}

}  // namespace
}  // namespace indexcache::bench

// One optional flag, for a kernel's own tuning runs: --indexer-only (no sparse MLA), --sparse-mla-only
// (no indexer or top-k), --topk-only (the top-k alone on torch.topk's shapes, bench/cuda/run_topk_bench.sh).
int main(int argc, char** argv) {
  using namespace indexcache;
  const std::string mode = argc > 1 ? argv[1] : "";
  if (argc > 2 || (!mode.empty() && mode != "--indexer-only" && mode != "--sparse-mla-only" && mode != "--topk-only")) {
    bench::Die("usage: cuda_kernel_bench [--indexer-only | --sparse-mla-only | --topk-only]");
  }
  auto be = CudaBackend::Create();
  if (!be.ok()) bench::Die(be.status().ToString());
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  nlohmann::json report;
  report["device"] = prop.name;
  report["sms"] = prop.multiProcessorCount;
  report["ceilings"] = bench::Ceilings((*be)->stream(), (*be)->cublas());
  if (mode == "--topk-only") {
    const int32_t rows = 2048, widest = 131072;
    float* scores = bench::DeviceRandom<float>(size_t{rows} * widest, 10);  // shared by every context
    report["topk"] = nlohmann::json::array();
    for (int32_t context : {8192, 32768, 65536, widest}) {
      report["topk"].push_back(bench::TopKAlone((*be)->stream(), scores, widest, context, rows));
      std::fprintf(stderr, "top-k %d done\n", context);
    }
    cudaFree(scores);
    std::printf("%s\n", report.dump(1).c_str());
    return 0;
  }
  // Each kernel with f32 queries and caches ("indexer", "sparse_mla": the earlier engine, as before)
  // and with bf16 ones ("…_bf16": the engine on CUDA now), in the same process.
  const DType kF = DType::kF32, kB = DType::kBF16;
  if (mode != "--sparse-mla-only") {
    for (const DType dtype : {kF, kB}) {
      const std::string key = dtype == kB ? "indexer_bf16" : "indexer";
      report[key] = nlohmann::json::array();
      for (int32_t context : {8192, 32768, 65536, 131072}) {
        report[key].push_back(bench::IndexerAndTopK((*be)->stream(), dtype, dtype, context, 2048));
        std::fprintf(stderr, "%s %d done\n", key.c_str(), context);
      }
      // The brief's 16-layer model's indexer (8 heads × 64) over its 16K prefill.
      report[key + "_8x64"] = bench::IndexerAndTopK((*be)->stream(), dtype, dtype, 16384, 2048, 8, 64);
    }
  }
  if (mode == "--indexer-only") {
    std::printf("%s\n", report.dump(1).c_str());
    return 0;
  }
  for (const DType dtype : {kF, kB}) {
    const std::string key = dtype == kB ? "sparse_mla_bf16" : "sparse_mla";
    report[key] = nlohmann::json::array();
    for (int32_t context : {8192, 32768, 131072}) {
      report[key].push_back(bench::SparseMla(**be, dtype, dtype, bench::kHeads, context, 1024, {1, 8, 32, 128}));
      std::fprintf(stderr, "%s %d done\n", key.c_str(), context);
    }
    report[key].push_back(bench::SparseMla(**be, dtype, dtype, 20, 131072, 1024, {1, 8, 32, 128}));
    std::fprintf(stderr, "%s 20 heads done\n", key.c_str());
  }
  std::printf("%s\n", report.dump(1).c_str());
  return 0;
}
