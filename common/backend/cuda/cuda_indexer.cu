// The lightning indexer's scores on tensor cores. A block owns a tile of 128 query rows — the
// (token, head) pairs of 128 / H consecutive tokens — kept in shared memory as bf16, and walks a range
// of 64-key tiles of their sequence: per tile one [128 × D] · [D × 64] product (wmma, fp32
// accumulation), then ReLU and the head-weighted sum per (token, key). The key range of a launch is
// split over grid.y so that short query batches (decode) still fill the GPU.
#include <mma.h>

#include <algorithm>

#include "common/backend/cuda/cuda_common.cuh"
#include "common/backend/cuda/cuda_kernels.h"

namespace indexcache::cuda {
namespace {

using namespace nvcuda;

constexpr int kRows = 128;   // query rows (token × head) per block
constexpr int kKeys = 64;    // keys per tile
constexpr int kWarps = 8;    // each warp owns 16 query rows × 64 keys
constexpr int kPad = 8;      // bf16 row padding against shared-memory bank conflicts
constexpr int kScorePad = 4;
constexpr int kLoadBatch = 4;  // global loads each thread keeps in flight when filling a key tile

struct IndexerArgs {
  const float* q;
  int64_t q_stride;
  const float* w;
  int64_t w_stride;
  const float* keys;
  int64_t key_stride;
  PagedRows rows;
  int32_t n, heads, dim, tokens_per_block, tiles_per_split;
  float scale;
  float* logits;
  int64_t logits_stride;
};

size_t SharedBytes(int dim, int tokens_per_block, int heads) {
  return sizeof(__nv_bfloat16) * (kRows + kKeys) * (dim + kPad) + sizeof(float) * kRows * (kKeys + kScorePad) +
         sizeof(float) * tokens_per_block * heads + 3 * sizeof(int32_t) * tokens_per_block;
}

__global__ void __launch_bounds__(kWarps * 32) IndexerLogitsKernel(IndexerArgs a) {
  extern __shared__ __align__(128) unsigned char smem[];
  const int ld = a.dim + kPad;
  auto* q_tile = reinterpret_cast<__nv_bfloat16*>(smem);
  auto* k_tile = q_tile + kRows * ld;
  auto* scores = reinterpret_cast<float*>(k_tile + kKeys * ld);
  float* weights = scores + kRows * (kKeys + kScorePad);
  auto* tok_seq = reinterpret_cast<int32_t*>(weights + a.tokens_per_block * a.heads);
  int32_t* tok_pos = tok_seq + a.tokens_per_block;
  int32_t* tok_done = tok_pos + a.tokens_per_block;

  const int t0 = blockIdx.x * a.tokens_per_block;
  const int tid = threadIdx.x, warp = tid / 32;
  const int used_rows = a.tokens_per_block * a.heads;
  for (int i = tid; i < a.tokens_per_block; i += blockDim.x) {
    const bool valid = t0 + i < a.n;
    tok_seq[i] = valid ? a.rows.token_seq[t0 + i] : -1;
    tok_pos[i] = valid ? a.rows.token_pos[t0 + i] : -1;
    tok_done[i] = valid ? 0 : 1;
  }
  // Query rows (token i, head h) = row i·H + h; rows past the block's tokens are zero.
  for (int e = tid; e < kRows * a.dim; e += blockDim.x) {
    const int row = e / a.dim, d = e % a.dim;
    const int i = row / a.heads, h = row % a.heads;
    float v = 0.0f;
    if (row < used_rows && t0 + i < a.n) v = a.q[(t0 + i) * a.q_stride + int64_t{h} * a.dim + d];
    q_tile[row * ld + d] = __float2bfloat16(v);
  }
  for (int e = tid; e < used_rows; e += blockDim.x) {
    const int i = e / a.heads, h = e % a.heads;
    weights[e] = t0 + i < a.n ? a.w[(t0 + i) * a.w_stride + h] * a.scale : 0.0f;
  }
  __syncthreads();

  // Tokens of one sequence share key tiles; a block whose tokens span several sequences (batched
  // decode) runs one pass per sequence.
  while (true) {
    int seq = -1;
    for (int i = 0; i < a.tokens_per_block; ++i) {
      if (!tok_done[i]) {
        seq = tok_seq[i];
        break;
      }
    }
    if (seq < 0) break;
    int max_pos = 0;
    for (int i = 0; i < a.tokens_per_block; ++i) {
      if (!tok_done[i] && tok_seq[i] == seq) max_pos = max(max_pos, tok_pos[i]);
    }
    const int tiles = (max_pos + kKeys) / kKeys;
    const int tile_begin = blockIdx.y * a.tiles_per_split;
    const int tile_end = min(tiles, tile_begin + a.tiles_per_split);
    const int32_t* table = a.rows.block_tables + int64_t{seq} * a.rows.tables_stride;
    for (int tile = tile_begin; tile < tile_end; ++tile) {
      const int key0 = tile * kKeys;
      // Keys (f32 in the paged pool) → bf16, four values per load, kLoadBatch loads in flight per
      // thread before any is stored.
      const int quads = a.dim / 4;
      for (int e0 = tid; e0 < kKeys * quads; e0 += blockDim.x * kLoadBatch) {
        float4 v[kLoadBatch];
#pragma unroll
        for (int b = 0; b < kLoadBatch; ++b) {
          const int e = e0 + b * blockDim.x, j = e / quads, s = key0 + j;
          v[b] = make_float4(0.f, 0.f, 0.f, 0.f);
          if (e < kKeys * quads && s <= max_pos) {
            const int64_t slot = int64_t{table[s / a.rows.block_size]} * a.rows.block_size + s % a.rows.block_size;
            v[b] = *reinterpret_cast<const float4*>(a.keys + slot * a.key_stride + (e % quads) * 4);
          }
        }
#pragma unroll
        for (int b = 0; b < kLoadBatch; ++b) {
          const int e = e0 + b * blockDim.x;
          if (e < kKeys * quads) StoreBf16x4(k_tile + (e / quads) * ld + (e % quads) * 4, v[b]);
        }
      }
      __syncthreads();
      if (warp * 16 < used_rows) {
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[kKeys / 16];
        for (int f = 0; f < kKeys / 16; ++f) wmma::fill_fragment(acc[f], 0.0f);
        for (int k = 0; k < a.dim; k += 16) {
          wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> qa;
          wmma::load_matrix_sync(qa, q_tile + warp * 16 * ld + k, ld);
          for (int f = 0; f < kKeys / 16; ++f) {
            wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> kb;
            wmma::load_matrix_sync(kb, k_tile + f * 16 * ld + k, ld);
            wmma::mma_sync(acc[f], qa, kb, acc[f]);
          }
        }
        for (int f = 0; f < kKeys / 16; ++f) {
          wmma::store_matrix_sync(scores + warp * 16 * (kKeys + kScorePad) + f * 16, acc[f], kKeys + kScorePad,
                                  wmma::mem_row_major);
        }
      }
      __syncthreads();
      for (int e = tid; e < a.tokens_per_block * kKeys; e += blockDim.x) {
        const int i = e / kKeys, j = e % kKeys;
        const int s = key0 + j;
        if (tok_done[i] || tok_seq[i] != seq || s > tok_pos[i]) continue;
        float total = 0.0f;
        const float* col = scores + i * a.heads * (kKeys + kScorePad) + j;
        const float* wi = weights + i * a.heads;
        for (int h = 0; h < a.heads; ++h) total += wi[h] * fmaxf(col[h * (kKeys + kScorePad)], 0.0f);
        a.logits[(t0 + i) * a.logits_stride + s] = total;
      }
      __syncthreads();
    }
    for (int i = tid; i < a.tokens_per_block; i += blockDim.x) {
      if (tok_seq[i] == seq) tok_done[i] = 1;
    }
    __syncthreads();
  }
}

}  // namespace

std::string IndexerLogits(Tensor q, Tensor head_weights, int32_t heads, Tensor key_pool, const PagedRows& rows,
                          int32_t max_context, float scale, Tensor logits, cudaStream_t stream) {
  const int64_t dim = key_pool.cols;
  if (q.dtype != DType::kF32 || head_weights.dtype != DType::kF32 || key_pool.dtype != DType::kF32 ||
      logits.dtype != DType::kF32) {
    return "indexer: query, weights, keys and logits must be f32";
  }
  if (heads <= 0 || heads > kRows || q.cols != int64_t{heads} * dim || head_weights.cols < heads ||
      head_weights.rows != q.rows || logits.rows != q.rows || logits.cols < max_context) {
    return "indexer: " + std::to_string(heads) + " heads of " + q.DebugString() + " over keys " +
           key_pool.DebugString() + " (at most 128 heads)";
  }
  if (dim % 16 != 0 || dim > 512 || key_pool.stride % 4 != 0 ||
      reinterpret_cast<uintptr_t>(key_pool.data) % 16 != 0) {
    return "indexer: key dim " + std::to_string(dim) + " must be a multiple of 16 (at most 512), keys 16-byte aligned";
  }
  if (q.rows == 0 || max_context <= 0) return {};
  IndexerArgs a{};
  a.q = q.ptr<float>();
  a.q_stride = q.stride;
  a.w = head_weights.ptr<float>();
  a.w_stride = head_weights.stride;
  a.keys = key_pool.ptr<float>();
  a.key_stride = key_pool.stride;
  a.rows = rows;
  a.n = static_cast<int32_t>(q.rows);
  a.heads = heads;
  a.dim = static_cast<int32_t>(dim);
  a.tokens_per_block = kRows / heads;
  a.scale = scale;
  a.logits = logits.ptr<float>();
  a.logits_stride = logits.stride;
  const int query_blocks = static_cast<int>(CeilDiv(a.n, a.tokens_per_block));
  const int tiles = static_cast<int>(CeilDiv(max_context, kKeys));
  // Enough blocks for every SM a few times over: split the key range when the query tiles are few.
  const int splits = std::clamp(static_cast<int>(CeilDiv(4 * 132, query_blocks)), 1, tiles);
  a.tiles_per_split = static_cast<int32_t>(CeilDiv(tiles, splits));
  const int grid_y = static_cast<int>(CeilDiv(tiles, a.tiles_per_split));
  const size_t shared = SharedBytes(a.dim, a.tokens_per_block, heads);
  cudaFuncSetAttribute(IndexerLogitsKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(shared));
  IndexerLogitsKernel<<<dim3(query_blocks, grid_y), kWarps * 32, shared, stream>>>(a);
  return LaunchError();
}

}  // namespace indexcache::cuda
