// Mixture of experts on the GPU. Routing: one thread per token runs the group-limited sigmoid router
// (moe_expert_choice.h, shared with the CPU backend) over the router logits. Experts: tokens are counted
// and bucketed by expert on the device (counts → offsets → scatter) and their rows gathered as bf16
// (x may be F32 or BF16, and so may out);
// then gate·up and down run over each expert's bucket, and a last kernel sums each token's K expert
// outputs in a fixed order (deterministic). Decode-sized batches run the products as matrix-vector work
// on the device alone (no host round trip, so a decode step can be captured as a CUDA graph); larger
// batches download the bucket offsets once and run one cuBLAS GEMM per expert, whose Hopper kernels
// are what those sizes need — one host round trip per MoE layer is negligible against a chunk's work.
// For those, each bucket is padded with zero rows to a multiple of kGemmRowAlign: cuBLAS chooses a
// kernel per GEMM shape on the host and caches the choice, and an expert's row count changes with
// every prompt's routing, so unpadded shapes kept missing that cache — on a small model the host spent
// longer choosing kernels than the GPU running them, and a process reached its speed only after tens
// of prompts (docs/performance.md). Padded, the shapes repeat from the first prompts on, for at most
// kGemmRowAlign − 1 extra rows per expert.
#include <cublas_v2.h>

#include <algorithm>

#include "common/backend/cuda/cuda_common.cuh"
#include "common/backend/cuda/cuda_kernels.h"
#include "common/backend/cuda/cuda_packs.cuh"
#include "common/backend/moe_expert_choice.h"

namespace indexcache::cuda {
namespace {

__global__ void RouteKernel(const float* logits, int64_t logits_stride, AnyRows bias, MoeRouting routing, int64_t n,
                            int32_t* ids, int64_t ids_stride, float* weights, int64_t weights_stride) {
  const int64_t r = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (r >= n) return;
  float score[kMaxMoeExperts], choice[kMaxMoeExperts], group_score[kMaxMoeExperts];
  bool taken[kMaxMoeExperts];
  for (int e = 0; e < routing.num_experts; ++e) {
    score[e] = 1.0f / (1.0f + expf(-logits[r * logits_stride + e]));
    choice[e] = score[e] + bias.at(0, e);
  }
  ChooseExperts(score, choice, routing, group_score, taken, ids + r * ids_stride, weights + r * weights_stride);
}

// Scratch layout of MoeExperts.
struct MoeScratch {
  int32_t* counts;        // [E]
  int32_t* offsets;       // [E + 1]
  int32_t* cursor;        // [E]
  int32_t* slot_token;    // [n·K] token of each expert-sorted slot
  int32_t* slot_of;       // [n·K] sorted slot of (token, k)
  __nv_bfloat16* xs;      // [n·K, hidden]
  float* gate_up;         // [n·K, 2I]
  __nv_bfloat16* act;     // [n·K, I]
  float* ys;              // [n·K, hidden]
};

size_t Align(size_t bytes) { return (bytes + 255) / 256 * 256; }

// Rows a batch's buckets can take: one per (token, k), plus each bucket's padding.
constexpr int32_t kGemmRowAlign = 128;
int64_t BucketRowsCapacity(int64_t rows, int32_t experts) { return rows + int64_t{experts} * (kGemmRowAlign - 1); }

// `rows`: BucketRowsCapacity of the batch.
MoeScratch Carve(void* base, int64_t rows, int64_t hidden, int64_t inter, int32_t experts) {
  char* p = static_cast<char*>(base);
  auto take = [&p](size_t bytes) {
    char* at = p;
    p += Align(bytes);
    return at;
  };
  MoeScratch s;
  s.counts = reinterpret_cast<int32_t*>(take(sizeof(int32_t) * experts));
  s.offsets = reinterpret_cast<int32_t*>(take(sizeof(int32_t) * (experts + 1)));
  s.cursor = reinterpret_cast<int32_t*>(take(sizeof(int32_t) * experts));
  s.slot_token = reinterpret_cast<int32_t*>(take(sizeof(int32_t) * rows));
  s.slot_of = reinterpret_cast<int32_t*>(take(sizeof(int32_t) * rows));
  s.xs = reinterpret_cast<__nv_bfloat16*>(take(sizeof(__nv_bfloat16) * rows * hidden));
  s.gate_up = reinterpret_cast<float*>(take(sizeof(float) * rows * 2 * inter));
  s.act = reinterpret_cast<__nv_bfloat16*>(take(sizeof(__nv_bfloat16) * rows * inter));
  s.ys = reinterpret_cast<float*>(take(sizeof(float) * rows * hidden));
  return s;
}

// The local expert of routing entry i (ids minus first_expert), -1 for another rank's expert.
__device__ int32_t LocalExpert(const int32_t* ids, int64_t ids_stride, int32_t k, int64_t i, int32_t first_expert,
                               int32_t experts) {
  const int32_t e = ids[(i / k) * ids_stride + i % k] - first_expert;
  return e >= 0 && e < experts ? e : -1;
}

__global__ void CountKernel(const int32_t* ids, int64_t ids_stride, int64_t n, int32_t k, int32_t first_expert,
                            int32_t experts, int32_t* counts) {
  const int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (i >= n * k) return;
  const int32_t e = LocalExpert(ids, ids_stride, k, i, first_expert, experts);
  if (e >= 0) atomicAdd(&counts[e], 1);
}

// Bucket e spans offsets[e]..offsets[e + 1]: its counts[e] rows, then zero rows up to a multiple of
// `align`.
__global__ void OffsetsKernel(const int32_t* counts, int32_t experts, int32_t align, int32_t* offsets,
                              int32_t* cursor) {
  if (threadIdx.x != 0) return;
  int32_t total = 0;
  for (int e = 0; e < experts; ++e) {
    offsets[e] = total;
    cursor[e] = 0;
    total += (counts[e] + align - 1) / align * align;
  }
  offsets[experts] = total;
}

// slot_of[i] = -1 for an entry of another rank's expert: it adds nothing here.
__global__ void ScatterKernel(const int32_t* ids, int64_t ids_stride, int64_t n, int32_t k, int32_t first_expert,
                              int32_t experts, const int32_t* offsets, int32_t* cursor, int32_t* slot_token,
                              int32_t* slot_of) {
  const int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (i >= n * k) return;
  const int32_t e = LocalExpert(ids, ids_stride, k, i, first_expert, experts);
  if (e < 0) {
    slot_of[i] = -1;
    return;
  }
  const int32_t slot = offsets[e] + atomicAdd(&cursor[e], 1);
  slot_token[slot] = static_cast<int32_t>(i / k);
  slot_of[i] = slot;
}

// xs[slot] = x[slot_token[slot]] as bf16 (a plain copy when x is bf16); a padding slot (token -1) gets
// zeros, so its products are zeros too. One block per slot up to the buckets' end (offsets[experts]).
// hidden is a multiple of 16 and xs dense, so only x's alignment decides between vector and scalar runs.
template <typename T>
__global__ void GatherRowsKernel(const T* x, int64_t x_stride, bool x_aligned, const int32_t* slot_token,
                                 const int32_t* total_rows, int64_t hidden, __nv_bfloat16* xs) {
  const int64_t slot = blockIdx.x;
  if (slot >= *total_rows) return;
  const int32_t token = slot_token[slot];
  for (int64_t c = threadIdx.x * int64_t{kPack}; c < hidden; c += blockDim.x * int64_t{kPack}) {
    float v[kPack] = {};
    if (token >= 0) LoadRun(x + token * x_stride + c, kPack, x_aligned, v);
    StoreRun(xs + slot * hidden + c, kPack, /*vector=*/true, v);
  }
}

// Over every bucket row, padding included (zeros stay zeros); grid-stride, as the count is on the device.
__global__ void SiluMulCastKernel(const float* gate_up, int64_t inter, const int32_t* total_rows, __nv_bfloat16* act) {
  const int64_t rows = *total_rows;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < rows * inter;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t r = i / inter, c = i % inter;
    const float g = gate_up[r * 2 * inter + c], u = gate_up[r * 2 * inter + inter + c];
    act[i] = __float2bfloat16(g / (1.0f + expf(-g)) * u);
  }
}

// Decode-sized batches (at most kGemvMaxTokens tokens, so at most that many rows per bucket, as a token
// picks an expert once): the products are matrix-vector work, bound by reading each routed expert's
// weights once. One warp owns one output column of one expert: it streams that weight row in 16-byte
// pieces and keeps one accumulator per bucket row in registers (the loop over rows is unrolled to the
// maximum so the accumulators never spill), then reduces across lanes. Empty experts' blocks return at
// once. K and the weight stride must be multiples of 8 and the rows 16-byte aligned.
constexpr int kGemvMaxTokens = 64, kGemvWarps = 8;
__global__ void __launch_bounds__(kGemvWarps * 32) GroupedGemvKernel(const __nv_bfloat16* a, const __nv_bfloat16* w,
                                                                     int64_t w_stride, const int32_t* offsets,
                                                                     int32_t n_cols, int32_t k_dim, float* c) {
  const int e = blockIdx.y;
  const int32_t row_begin = offsets[e], rows = offsets[e + 1] - row_begin;
  const int col = blockIdx.x * kGemvWarps + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (rows == 0 || col >= n_cols) return;
  const __nv_bfloat16* w_row = w + (int64_t{e} * n_cols + col) * w_stride;
  const __nv_bfloat16* a_rows = a + int64_t{row_begin} * k_dim;
  float acc[kGemvMaxTokens] = {};
  for (int k0 = lane * 8; k0 < k_dim; k0 += 32 * 8) {
    const uint4 packed = *reinterpret_cast<const uint4*>(w_row + k0);
    const __nv_bfloat162* w2 = reinterpret_cast<const __nv_bfloat162*>(&packed);
    float2 wf[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) wf[i] = __bfloat1622float2(w2[i]);
#pragma unroll
    for (int r = 0; r < kGemvMaxTokens; ++r) {
      if (r >= rows) break;
      const uint4 x_packed = *reinterpret_cast<const uint4*>(a_rows + int64_t{r} * k_dim + k0);
      const __nv_bfloat162* x2 = reinterpret_cast<const __nv_bfloat162*>(&x_packed);
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const float2 xf = __bfloat1622float2(x2[i]);
        acc[r] += xf.x * wf[i].x + xf.y * wf[i].y;
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kGemvMaxTokens; ++r) {
    if (r >= rows) break;
    float v = acc[r];
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
    if (lane == 0) c[int64_t{row_begin + r} * n_cols + col] = v;
  }
}

// C[rows_e, N] = A[rows_e, K] · W_eᵀ for every expert e (A's rows of expert e are offsets[e]..offsets[e+1];
// W_e = rows e·N..(e+1)·N of w), one cuBLAS GEMM per non-empty expert; `offsets` are on the host.
std::string ExpertGemmsByLibrary(cublasHandle_t cublas, const __nv_bfloat16* a, const __nv_bfloat16* w,
                                 int64_t w_stride, const int32_t* offsets, int32_t experts, int32_t n_cols,
                                 int32_t k_dim, float* c) {
  const float alpha = 1.0f, beta = 0.0f;
  for (int e = 0; e < experts; ++e) {
    const int32_t row_begin = offsets[e], rows = offsets[e + 1] - row_begin;
    if (rows == 0) continue;
    // Row-major C[rows, N] = A[rows, K] · W_eᵀ is column-major Cᵀ = W_e · Aᵀ with W_e read transposed.
    const cublasStatus_t status = cublasGemmEx(
        cublas, CUBLAS_OP_T, CUBLAS_OP_N, n_cols, rows, k_dim, &alpha, w + int64_t{e} * n_cols * w_stride, CUDA_R_16BF,
        static_cast<int>(w_stride), a + int64_t{row_begin} * k_dim, CUDA_R_16BF, k_dim, &beta,
        c + int64_t{row_begin} * n_cols, CUDA_R_32F, n_cols, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    if (status != CUBLAS_STATUS_SUCCESS) return "moe experts: cuBLAS GEMM of expert " + std::to_string(e) + " failed";
  }
  return {};
}

// out[r] += Σ_k weight[r, k] · ys[slot_of[r, k]], k in order (ys dense f32, hidden a multiple of 16).
template <typename TO>
__global__ void CombineKernel(const float* ys, const int32_t* slot_of, const float* weights, int64_t weights_stride,
                              int32_t top_k, int64_t hidden, TO* out, int64_t out_stride, bool out_aligned) {
  const int64_t r = blockIdx.x;
  for (int64_t c = threadIdx.x * int64_t{kPack}; c < hidden; c += blockDim.x * int64_t{kPack}) {
    float total[kPack] = {};
    for (int k = 0; k < top_k; ++k) {
      const int32_t slot = slot_of[r * top_k + k];
      if (slot < 0) continue;  // another rank's expert
      const float w = weights[r * weights_stride + k];
      float y[kPack];
      LoadRun(ys + int64_t{slot} * hidden + c, kPack, /*vector=*/true, y);
#pragma unroll
      for (int j = 0; j < kPack; ++j) total[j] += w * y[j];
    }
    float o[kPack];
    LoadRun(out + r * out_stride + c, kPack, out_aligned, o);
#pragma unroll
    for (int j = 0; j < kPack; ++j) o[j] += total[j];
    StoreRun(out + r * out_stride + c, kPack, out_aligned, o);
  }
}

}  // namespace

std::string MoeRouteFromLogits(Tensor logits, Tensor correction_bias, const MoeRouting& routing, Tensor topk_ids,
                               Tensor topk_weights, cudaStream_t stream) {
  if (routing.num_experts <= 0 || routing.num_experts > kMaxMoeExperts || routing.n_group <= 0 ||
      routing.num_experts % routing.n_group != 0 || routing.top_k <= 0 || routing.top_k > routing.num_experts ||
      routing.topk_group <= 0 || routing.topk_group > routing.n_group) {
    return "moe route: " + std::to_string(routing.num_experts) + " experts in " + std::to_string(routing.n_group) +
           " groups, top " + std::to_string(routing.top_k) + " (at most 256 experts)";
  }
  if (logits.cols != routing.num_experts || topk_ids.cols < routing.top_k || topk_weights.cols < routing.top_k ||
      topk_ids.dtype != DType::kI32 || topk_weights.dtype != DType::kF32 || !IsFloat(correction_bias) ||
      correction_bias.cols != routing.num_experts) {
    return "moe route: logits " + logits.DebugString() + " / outputs " + topk_ids.DebugString() + " disagree";
  }
  if (logits.rows == 0) return {};
  RouteKernel<<<static_cast<unsigned>(CeilDiv(logits.rows, 64)), 64, 0, stream>>>(
      logits.ptr<float>(), logits.stride, AnyRowsOf(correction_bias), routing, logits.rows, topk_ids.ptr<int32_t>(),
      topk_ids.stride, topk_weights.ptr<float>(), topk_weights.stride);
  return LaunchError();
}

size_t MoeScratchBytes(int64_t tokens, int64_t top_k, int64_t hidden, int64_t inter, int32_t num_experts) {
  const int64_t rows = BucketRowsCapacity(tokens * top_k, num_experts);
  return Align(sizeof(int32_t) * num_experts) * 2 + Align(sizeof(int32_t) * (num_experts + 1)) +
         2 * Align(sizeof(int32_t) * rows) + Align(sizeof(__nv_bfloat16) * rows * hidden) +
         Align(sizeof(float) * rows * 2 * inter) + Align(sizeof(__nv_bfloat16) * rows * inter) +
         Align(sizeof(float) * rows * hidden);
}

std::string MoeExperts(Tensor x, Tensor gate_up, Tensor down, int32_t num_experts, int32_t first_expert,
                       Tensor topk_ids, Tensor topk_weights, Tensor out, void* scratch, cublasHandle_t cublas,
                       int32_t* host_offsets, cudaStream_t stream) {
  const int64_t n = x.rows, hidden = x.cols, inter = down.cols, k = topk_ids.cols;
  if (!IsFloat(x) || !IsFloat(out) || gate_up.dtype != DType::kBF16 || down.dtype != DType::kBF16 ||
      topk_ids.dtype != DType::kI32 || topk_weights.dtype != DType::kF32) {
    return "moe experts: x and out must be f32 or bf16, expert weights bf16, routing i32 ids and f32 weights";
  }
  if (num_experts <= 0 || num_experts > kMaxMoeExperts || gate_up.rows != int64_t{num_experts} * 2 * inter || gate_up.cols != hidden ||
      down.rows != int64_t{num_experts} * hidden || out.rows != n || out.cols != hidden || topk_weights.rows != n ||
      topk_ids.rows != n || topk_weights.cols < k) {
    return "moe experts: weights " + gate_up.DebugString() + " / " + down.DebugString() + " disagree with x " +
           x.DebugString();
  }
  if (hidden % 16 != 0 || inter % 16 != 0) return "moe experts: hidden and intermediate sizes must be multiples of 16";
  if (gate_up.stride % 8 != 0 || down.stride % 8 != 0 || reinterpret_cast<uintptr_t>(gate_up.data) % 16 != 0 ||
      reinterpret_cast<uintptr_t>(down.data) % 16 != 0) {
    return "moe experts: expert weight rows must be 16-byte aligned";
  }
  if (n == 0) return {};
  // Up to kGemvMaxTokens tokens (every decode step, graph-captured or not) the matrix-vector kernel
  // runs on the device alone, over unpadded buckets; larger batches download the bucket offsets and
  // run cuBLAS per expert, over padded ones.
  const bool by_library = n > kGemvMaxTokens;
  const int64_t rows = n * k;
  const int64_t capacity = BucketRowsCapacity(rows, num_experts);
  MoeScratch s = Carve(scratch, capacity, hidden, inter, num_experts);
  cudaMemsetAsync(s.counts, 0, sizeof(int32_t) * num_experts, stream);
  if (by_library) cudaMemsetAsync(s.slot_token, 0xff, sizeof(int32_t) * capacity, stream);  // -1: padding
  const unsigned grid = static_cast<unsigned>(CeilDiv(rows, 256));
  CountKernel<<<grid, 256, 0, stream>>>(topk_ids.ptr<int32_t>(), topk_ids.stride, n, static_cast<int32_t>(k),
                                        first_expert, num_experts, s.counts);
  OffsetsKernel<<<1, 32, 0, stream>>>(s.counts, num_experts, by_library ? kGemmRowAlign : 1, s.offsets, s.cursor);
  ScatterKernel<<<grid, 256, 0, stream>>>(topk_ids.ptr<int32_t>(), topk_ids.stride, n, static_cast<int32_t>(k),
                                          first_expert, num_experts, s.offsets, s.cursor, s.slot_token, s.slot_of);
  DispatchFloat(x.dtype, [&](auto xt) {
    using T = decltype(xt);
    GatherRowsKernel<T><<<static_cast<unsigned>(by_library ? capacity : rows), 64, 0, stream>>>(
        x.ptr<T>(), x.stride, RunsAligned(x), s.slot_token, s.offsets + num_experts, hidden, s.xs);
    return 0;
  });
  if (by_library) {
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    if (cudaStreamIsCapturing(stream, &capture) != cudaSuccess || capture != cudaStreamCaptureStatusNone) {
      return "moe experts: " + std::to_string(n) + " tokens cannot be captured in a CUDA graph (at most " +
             std::to_string(kGemvMaxTokens) + ")";
    }
    if (cublas == nullptr || host_offsets == nullptr) return "moe experts: large batches need a cuBLAS handle";
    cudaMemcpyAsync(host_offsets, s.offsets, sizeof(int32_t) * (num_experts + 1), cudaMemcpyDeviceToHost, stream);
    const cudaError_t e = cudaStreamSynchronize(stream);
    if (e != cudaSuccess) return std::string("moe experts: ") + cudaGetErrorString(e);
  }
  // gate·up of every expert's rows (bf16 → f32), SiLU·up back to bf16, then down.
  auto expert_gemms = [&](const __nv_bfloat16* a, const Tensor& w, int64_t n_cols, int64_t k_dim, float* c) {
    if (by_library) {
      return ExpertGemmsByLibrary(cublas, a, w.ptr<__nv_bfloat16>(), w.stride, host_offsets, num_experts,
                                  static_cast<int32_t>(n_cols), static_cast<int32_t>(k_dim), c);
    }
    GroupedGemvKernel<<<dim3(static_cast<unsigned>(CeilDiv(n_cols, kGemvWarps)), num_experts), kGemvWarps * 32, 0,
                        stream>>>(a, w.ptr<__nv_bfloat16>(), w.stride, s.offsets, static_cast<int32_t>(n_cols),
                                  static_cast<int32_t>(k_dim), c);
    return LaunchError();
  };
  std::string error = expert_gemms(s.xs, gate_up, 2 * inter, hidden, s.gate_up);
  if (!error.empty()) return error;
  SiluMulCastKernel<<<static_cast<unsigned>(std::min<int64_t>(CeilDiv(rows * inter, 256), 65535)), 256, 0, stream>>>(
      s.gate_up, inter, s.offsets + num_experts, s.act);
  error = expert_gemms(s.act, down, hidden, inter, s.ys);
  if (!error.empty()) return error;
  return DispatchFloat(out.dtype, [&](auto ot) {
    using TO = decltype(ot);
    CombineKernel<TO><<<static_cast<unsigned>(n), 64, 0, stream>>>(s.ys, s.slot_of, topk_weights.ptr<float>(),
                                                                   topk_weights.stride, static_cast<int32_t>(k),
                                                                   hidden, out.ptr<TO>(), out.stride,
                                                                   RunsAligned(out));
    return LaunchError();
  });
}

}  // namespace indexcache::cuda
