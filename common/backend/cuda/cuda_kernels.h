// Host-side launchers of the CUDA backend's own kernels. Each enqueues work on `stream` and returns
// an empty string, or a message saying why the input cannot run (checked before anything is enqueued).
// CudaBackend calls these; bench/cuda calls the indexer and top-k launchers directly to time them.
#pragma once

#include <cstdint>
#include <string>

#include "common/backend/backend.h"

typedef struct CUstream_st* cudaStream_t;
typedef struct cublasContext* cublasHandle_t;

namespace indexcache::cuda {

// Where each query token's keys sit: I32 device arrays of n entries (contiguous) and the block tables.
struct PagedRows {
  const int32_t* token_seq = nullptr;
  const int32_t* token_pos = nullptr;
  const int32_t* block_tables = nullptr;
  int64_t tables_stride = 0;
  int32_t block_size = 0;
};
PagedRows PagedRowsOf(const BatchLayout& batch);

// --- dense ops (cuda_dense_ops.cu) ---
// Float tensors may be F32 or BF16, each independently (Backend's contract); GatherRows and WriteCacheRows
// convert between the two (exactly, or rounding to nearest even) and copy I32 only to I32.
std::string CastToBf16(Tensor x, void* out, cudaStream_t stream);  // x: F32; out: dense [rows, cols] bf16
std::string Fill(Tensor dst, float value, cudaStream_t stream);
std::string Embedding(Tensor table, Tensor ids, Tensor out, cudaStream_t stream);
std::string RmsNorm(Tensor x, Tensor weight, float eps, Tensor out, cudaStream_t stream);
std::string LayerNorm(Tensor x, Tensor weight, Tensor bias, float eps, Tensor out, cudaStream_t stream);
std::string RopeInterleaved(Tensor x, int32_t heads, int32_t head_stride, int32_t rope_offset, int32_t rope_dim,
                            float theta, Tensor token_pos, cudaStream_t stream);
std::string SiluMul(Tensor gate_up, Tensor out, cudaStream_t stream);
std::string Add(Tensor x, Tensor y, cudaStream_t stream);
std::string GatherRows(Tensor src, Tensor row_ids, Tensor dst, cudaStream_t stream);
std::string ArgMax(Tensor x, Tensor out, cudaStream_t stream);
std::string WriteCacheRows(Tensor src, Tensor slot_mapping, Tensor pool, cudaStream_t stream);

// --- lightning indexer (cuda_indexer.cu) ---
// logits[r, s] = Σ_h head_weights[r, h] · ReLU(scale · q[r, h]·key[s]) for s <= token_pos[r] (later
// columns are left unwritten), on tensor cores with bf16 operands. q, head_weights and key_pool each
// F32 or BF16 (bf16 keys are copied into shared memory as they are); logits: F32 [n, >= max_context].
std::string IndexerLogits(Tensor q, Tensor head_weights, int32_t heads, Tensor key_pool, const PagedRows& rows,
                          int32_t max_context, float scale, Tensor logits, cudaStream_t stream);

// --- top-k (cuda_topk.cu) ---
// For every row r: the k = min(out.cols, token_pos[r] + 1) best columns among 0..token_pos[r] of
// logits, best first (ties to the lower column), then -1. Radix select, not a sort.
std::string RowTopK(Tensor logits, const int32_t* token_pos, Tensor out, cudaStream_t stream);

// --- sampling (cuda_sampling.cu) ---
// Backend::SampleTokens: x F32 [n, vocab < 2^24], draws I32 [n, kSamplingDrawWords], out I32 [n, 1].
std::string SampleTokens(Tensor x, Tensor draws, Tensor out, cudaStream_t stream);

// --- sparse MLA (cuda_sparse_mla.cu) ---
// Bytes of scratch SparseMlaAttention needs for this shape (partial results of split key ranges).
size_t SparseMlaScratchBytes(int64_t tokens, int32_t heads, int64_t latent_dim, int64_t topk_cols);
// q_latent, q_rope, latent_pool and out each F32 or BF16 (a bf16 pool's rows are copied as they are).
std::string SparseMlaAttention(Tensor q_latent, Tensor q_rope, int32_t heads, Tensor latent_pool,
                               const PagedRows& rows, Tensor indices, float scale, Tensor out, void* scratch,
                               cudaStream_t stream);

// --- mixture of experts (cuda_moe.cu) ---
constexpr int32_t kMaxMoeExperts = 256;
// Routing from the router logits [n, E] (x · gate_wᵀ, computed by the caller).
std::string MoeRouteFromLogits(Tensor logits, Tensor correction_bias, const MoeRouting& routing, Tensor topk_ids,
                               Tensor topk_weights, cudaStream_t stream);
size_t MoeScratchBytes(int64_t tokens, int64_t top_k, int64_t hidden, int64_t inter, int32_t num_experts);
// Batches of more than 64 tokens run the expert GEMMs through `cublas` (on `stream`, not capturable)
// after downloading the bucket offsets into `host_offsets` (pinned, >= num_experts + 1 ints); smaller
// ones run our matrix-vector kernel without waiting for the host.
std::string MoeExperts(Tensor x, Tensor gate_up, Tensor down, int32_t num_experts, int32_t first_expert,
                       Tensor topk_ids, Tensor topk_weights, Tensor out, void* scratch, cublasHandle_t cublas,
                       int32_t* host_offsets, cudaStream_t stream);

}  // namespace indexcache::cuda
