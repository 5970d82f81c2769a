// Sparse MLA attention in the absorbed (latent) form, FlashAttention-style over the selected keys.
// A block owns one token and a group of 16 heads: their queries [q_latent | q_rope] sit in shared
// memory as bf16; it walks its range of the token's selected keys in tiles of 64, gathering each
// key's latent row from the paged pool (bf16 in shared memory), computes the 16 × 64 scores on tensor
// cores, updates the running softmax, and accumulates P · C (C = the latent part of the rows) into an
// fp32 output tile. All heads of the group share every key row they load (MLA's single latent KV).
// When a token's keys are few compared with the GPU (decode), the key range is split over grid.z and
// a second kernel merges the partial softmax results.
#include <mma.h>

#include <algorithm>
#include <cfloat>

#include "common/backend/cuda/cuda_common.cuh"
#include "common/backend/cuda/cuda_kernels.h"

namespace indexcache::cuda {
namespace {

using namespace nvcuda;

constexpr int kHeads = 16;  // heads per block (one wmma row tile)
constexpr int kKeys = 64;   // keys per tile
constexpr int kWarps = 8;  // 4 compute the scores; all 8 load keys and accumulate P · C
constexpr int kPad = 8;
constexpr int kLoadBatch = 8;  // global loads each thread keeps in flight when filling a key tile

struct MlaArgs {
  const float* q_latent;
  int64_t ql_stride;
  const float* q_rope;
  int64_t qr_stride;
  const float* pool;
  int64_t pool_stride;
  const int32_t* indices;
  int64_t idx_stride;
  int32_t topk_cols;
  PagedRows rows;
  int32_t heads, latent, rope, keys_per_split, splits;
  float scale;
  float* out;  // final output (splits == 1)
  int64_t out_stride;
  float* part_o;  // [n, heads, splits, latent]
  float* part_ml;  // [n, heads, splits, 2]: running max and sum
};

// Query and key rows are zero-padded to a multiple of 16 columns (the wmma k step).
int PaddedWidth(int latent, int rope) { return (latent + rope + 15) / 16 * 16; }

size_t SharedBytes(int latent, int rope) {
  const int ld = PaddedWidth(latent, rope) + kPad;
  return sizeof(__nv_bfloat16) * (kHeads + kKeys) * ld + sizeof(float) * kHeads * (kKeys + 4) +
         sizeof(__nv_bfloat16) * kHeads * (kKeys + kPad) + sizeof(float) * kHeads * (latent + 4) +
         sizeof(float) * 3 * kHeads + sizeof(int64_t) * kKeys;
}

__global__ void __launch_bounds__(kWarps * 32) SparseMlaKernel(MlaArgs a) {
  extern __shared__ __align__(128) unsigned char smem[];
  const int width = a.latent + a.rope;
  const int padded = (width + 15) / 16 * 16;
  const int ld = padded + kPad;
  const int ld_s = kKeys + 4, ld_p = kKeys + kPad, ld_o = a.latent + 4;
  auto* q_tile = reinterpret_cast<__nv_bfloat16*>(smem);
  __nv_bfloat16* k_tile = q_tile + kHeads * ld;
  auto* scores = reinterpret_cast<float*>(k_tile + kKeys * ld);
  auto* probs = reinterpret_cast<__nv_bfloat16*>(scores + kHeads * ld_s);
  auto* o_tile = reinterpret_cast<float*>(probs + kHeads * ld_p);
  float* row_max = o_tile + kHeads * ld_o;
  float* row_sum = row_max + kHeads;
  float* row_alpha = row_sum + kHeads;
  auto* slots = reinterpret_cast<int64_t*>(row_alpha + kHeads);

  const int64_t r = blockIdx.x;
  const int h0 = blockIdx.y * kHeads;
  const int split = blockIdx.z;
  const int tid = threadIdx.x, warp = tid / 32;
  const int group_heads = min(kHeads, a.heads - h0);

  for (int e = tid; e < kHeads * padded; e += blockDim.x) {
    const int h = e / padded, d = e % padded;
    float v = 0.0f;
    if (h < group_heads && d < width) {
      v = d < a.latent ? a.q_latent[r * a.ql_stride + int64_t{h0 + h} * a.latent + d]
                       : a.q_rope[r * a.qr_stride + int64_t{h0 + h} * a.rope + (d - a.latent)];
    }
    q_tile[h * ld + d] = __float2bfloat16(v);
  }
  for (int e = tid; e < kHeads * a.latent; e += blockDim.x) o_tile[(e / a.latent) * ld_o + e % a.latent] = 0.0f;
  if (tid < kHeads) {
    row_max[tid] = -FLT_MAX;
    row_sum[tid] = 0.0f;
  }
  const int32_t seq = a.rows.token_seq[r];
  const int32_t* table = a.rows.block_tables + int64_t{seq} * a.rows.tables_stride;
  const int32_t* selected = a.indices + r * a.idx_stride;
  const int key_begin = split * a.keys_per_split;
  const int key_end = min(a.topk_cols, key_begin + a.keys_per_split);
  __syncthreads();

  for (int key0 = key_begin; key0 < key_end; key0 += kKeys) {
    if (tid < kKeys) {
      const int j = key0 + tid;
      const int32_t pos = j < key_end ? selected[j] : -1;
      slots[tid] = pos < 0 ? -1 : int64_t{table[pos / a.rows.block_size]} * a.rows.block_size + pos % a.rows.block_size;
    }
    __syncthreads();
    // Latent rows (f32) → bf16, kLoadBatch float4 loads in flight per thread before any is stored.
    const int quads = width / 4;
    for (int e0 = tid; e0 < kKeys * quads; e0 += blockDim.x * kLoadBatch) {
      float4 v[kLoadBatch];
#pragma unroll
      for (int b = 0; b < kLoadBatch; ++b) {
        const int e = e0 + b * blockDim.x;
        v[b] = make_float4(0.f, 0.f, 0.f, 0.f);
        if (e < kKeys * quads && slots[e / quads] >= 0) {
          v[b] = *reinterpret_cast<const float4*>(a.pool + slots[e / quads] * a.pool_stride + (e % quads) * 4);
        }
      }
#pragma unroll
      for (int b = 0; b < kLoadBatch; ++b) {
        const int e = e0 + b * blockDim.x;
        if (e < kKeys * quads) StoreBf16x4(k_tile + (e / quads) * ld + (e % quads) * 4, v[b]);
      }
    }
    for (int e = tid; e < kKeys * (padded - width); e += blockDim.x) {
      k_tile[(e / (padded - width)) * ld + width + e % (padded - width)] = __float2bfloat16(0.0f);
    }
    __syncthreads();
    if (warp < kKeys / 16) {  // scores [16 × 64]: warp w computes keys 16w..16w+15
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      wmma::fill_fragment(acc, 0.0f);
      for (int k = 0; k < padded; k += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> qa;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> kb;
        wmma::load_matrix_sync(qa, q_tile + k, ld);
        wmma::load_matrix_sync(kb, k_tile + warp * 16 * ld + k, ld);
        wmma::mma_sync(acc, qa, kb, acc);
      }
      wmma::store_matrix_sync(scores + warp * 16, acc, ld_s, wmma::mem_row_major);
    }
    __syncthreads();
    // Online softmax: 8 threads per head row, 8 keys each (the first 128 threads, whole warps).
    if (tid < kHeads * 8) {
      const int h = tid / 8, part = tid % 8;
      float local_max = -FLT_MAX;
      for (int j = part * 8; j < part * 8 + 8; ++j) {
        if (slots[j] >= 0) local_max = fmaxf(local_max, scores[h * ld_s + j] * a.scale);
      }
      for (int o = 4; o > 0; o >>= 1) local_max = fmaxf(local_max, __shfl_xor_sync(0xffffffffu, local_max, o));
      const float old_max = row_max[h];
      const float new_max = fmaxf(old_max, local_max);
      float local_sum = 0.0f;
      for (int j = part * 8; j < part * 8 + 8; ++j) {
        const float p = slots[j] >= 0 ? __expf(scores[h * ld_s + j] * a.scale - new_max) : 0.0f;
        probs[h * ld_p + j] = __float2bfloat16(p);
        local_sum += p;
      }
      for (int o = 4; o > 0; o >>= 1) local_sum += __shfl_xor_sync(0xffffffffu, local_sum, o);
      __syncwarp();
      if (part == 0) {
        const float alpha = old_max == -FLT_MAX ? 0.0f : __expf(old_max - new_max);
        row_alpha[h] = alpha;
        row_sum[h] = row_sum[h] * alpha + local_sum;
        row_max[h] = new_max;
      }
    }
    __syncthreads();
    for (int e = tid; e < kHeads * a.latent; e += blockDim.x) {
      const int h = e / a.latent;
      o_tile[h * ld_o + e % a.latent] *= row_alpha[h];
    }
    __syncthreads();
    // O[16 × latent] += P[16 × 64] · C[64 × latent]: warps take column tiles in turn.
    for (int c0 = warp * 16; c0 < a.latent; c0 += kWarps * 16) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      wmma::load_matrix_sync(acc, o_tile + c0, ld_o, wmma::mem_row_major);
      for (int k = 0; k < kKeys; k += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> pa;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> vb;
        wmma::load_matrix_sync(pa, probs + k, ld_p);
        wmma::load_matrix_sync(vb, k_tile + k * ld + c0, ld);
        wmma::mma_sync(acc, pa, vb, acc);
      }
      wmma::store_matrix_sync(o_tile + c0, acc, ld_o, wmma::mem_row_major);
    }
    __syncthreads();
  }

  if (a.splits == 1) {
    for (int e = tid; e < group_heads * a.latent; e += blockDim.x) {
      const int h = e / a.latent, c = e % a.latent;
      const float sum = row_sum[h];
      a.out[r * a.out_stride + int64_t{h0 + h} * a.latent + c] = sum > 0.0f ? o_tile[h * ld_o + c] / sum : 0.0f;
    }
    return;
  }
  for (int e = tid; e < group_heads * a.latent; e += blockDim.x) {
    const int h = e / a.latent, c = e % a.latent;
    const int64_t at = ((r * a.heads + h0 + h) * a.splits + split);
    a.part_o[at * a.latent + c] = o_tile[h * ld_o + c];
  }
  if (tid < group_heads) {
    const int64_t at = ((r * a.heads + h0 + tid) * a.splits + split);
    a.part_ml[at * 2] = row_max[tid];
    a.part_ml[at * 2 + 1] = row_sum[tid];
  }
}

// out[r, h] = Σ_split e^{m_split - M} O_split / Σ_split e^{m_split - M} l_split. One block per (r, h).
__global__ void MergeSplitsKernel(const float* part_o, const float* part_ml, int32_t heads, int32_t splits,
                                  int32_t latent, float* out, int64_t out_stride) {
  const int64_t r = blockIdx.x / heads;
  const int h = blockIdx.x % heads;
  const int64_t base = (r * heads + h) * splits;
  float m = -FLT_MAX;
  for (int s = 0; s < splits; ++s) {
    if (part_ml[(base + s) * 2 + 1] > 0.0f) m = fmaxf(m, part_ml[(base + s) * 2]);
  }
  float total = 0.0f;
  for (int s = 0; s < splits; ++s) {
    const float l = part_ml[(base + s) * 2 + 1];
    if (l > 0.0f) total += __expf(part_ml[(base + s) * 2] - m) * l;
  }
  for (int c = threadIdx.x; c < latent; c += blockDim.x) {
    float acc = 0.0f;
    for (int s = 0; s < splits; ++s) {
      const float l = part_ml[(base + s) * 2 + 1];
      if (l > 0.0f) acc += __expf(part_ml[(base + s) * 2] - m) * part_o[(base + s) * latent + c];
    }
    out[r * out_stride + int64_t{h} * latent + c] = total > 0.0f ? acc / total : 0.0f;
  }
}

// Splits per token so that tokens × head groups × splits fills the GPU a few times over.
int SplitsFor(int64_t tokens, int32_t heads, int64_t topk_cols) {
  const int64_t blocks = tokens * CeilDiv(heads, kHeads);
  const int64_t max_splits = CeilDiv(topk_cols, kKeys);
  return static_cast<int>(std::clamp<int64_t>(CeilDiv(2 * 132, blocks), 1, max_splits));
}

}  // namespace

size_t SparseMlaScratchBytes(int64_t tokens, int32_t heads, int64_t latent_dim, int64_t topk_cols) {
  const int splits = SplitsFor(tokens, heads, topk_cols);
  if (splits == 1) return 0;
  return sizeof(float) * static_cast<size_t>(tokens * heads * splits) * (latent_dim + 2);
}

std::string SparseMlaAttention(Tensor q_latent, Tensor q_rope, int32_t heads, Tensor latent_pool,
                               const PagedRows& rows, Tensor indices, float scale, Tensor out, void* scratch,
                               cudaStream_t stream) {
  if (q_latent.dtype != DType::kF32 || q_rope.dtype != DType::kF32 || latent_pool.dtype != DType::kF32 ||
      out.dtype != DType::kF32 || indices.dtype != DType::kI32 || heads <= 0) {
    return "sparse MLA: queries, pool and output must be f32, indices i32";
  }
  const int64_t latent = q_latent.cols / heads, rope = q_rope.cols / heads;
  if (latent * heads != q_latent.cols || rope * heads != q_rope.cols || latent + rope != latent_pool.cols ||
      out.cols != q_latent.cols || out.rows != q_latent.rows || q_rope.rows != q_latent.rows ||
      indices.rows != q_latent.rows) {
    return "sparse MLA: " + q_latent.DebugString() + " / " + q_rope.DebugString() + " over pool " +
           latent_pool.DebugString() + " disagree for " + std::to_string(heads) + " heads";
  }
  if (latent % 16 != 0 || (latent + rope) % 4 != 0 || latent_pool.stride % 4 != 0 ||
      reinterpret_cast<uintptr_t>(latent_pool.data) % 16 != 0 || latent + rope > 1024) {
    return "sparse MLA: the latent width must be a multiple of 16 and latent+rope of 4 (at most 1024), rows 16-byte "
           "aligned";
  }
  if (q_latent.rows == 0 || indices.cols == 0) return {};
  MlaArgs a{};
  a.q_latent = q_latent.ptr<float>();
  a.ql_stride = q_latent.stride;
  a.q_rope = q_rope.ptr<float>();
  a.qr_stride = q_rope.stride;
  a.pool = latent_pool.ptr<float>();
  a.pool_stride = latent_pool.stride;
  a.indices = indices.ptr<int32_t>();
  a.idx_stride = indices.stride;
  a.topk_cols = static_cast<int32_t>(indices.cols);
  a.rows = rows;
  a.heads = heads;
  a.latent = static_cast<int32_t>(latent);
  a.rope = static_cast<int32_t>(rope);
  a.splits = SplitsFor(q_latent.rows, heads, indices.cols);
  a.keys_per_split = static_cast<int32_t>(CeilDiv(CeilDiv(indices.cols, a.splits), kKeys) * kKeys);
  a.splits = static_cast<int32_t>(CeilDiv(indices.cols, a.keys_per_split));
  a.scale = scale;
  a.out = out.ptr<float>();
  a.out_stride = out.stride;
  if (a.splits > 1) {
    if (scratch == nullptr) return "sparse MLA: split-key scratch missing";
    a.part_o = static_cast<float*>(scratch);
    a.part_ml = a.part_o + q_latent.rows * heads * a.splits * latent;
  }
  const size_t shared = SharedBytes(a.latent, a.rope);
  cudaFuncSetAttribute(SparseMlaKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(shared));
  const dim3 grid(static_cast<unsigned>(q_latent.rows), static_cast<unsigned>(CeilDiv(heads, kHeads)), a.splits);
  SparseMlaKernel<<<grid, kWarps * 32, shared, stream>>>(a);
  if (a.splits > 1) {
    MergeSplitsKernel<<<static_cast<unsigned>(q_latent.rows * heads), 128, 0, stream>>>(
        a.part_o, a.part_ml, heads, a.splits, a.latent, a.out, a.out_stride);
  }
  return LaunchError();
}

}  // namespace indexcache::cuda
