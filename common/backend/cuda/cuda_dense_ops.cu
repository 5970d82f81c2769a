// Row-wise ops of the CUDA backend: casts, fills, embedding lookup, norms, RoPE, SwiGLU, residual add,
// row gathers and paged-cache writes. All are memory-bound; each runs one block per row (or a grid of
// elements) and reads each input once.
#include <cmath>

#include "common/backend/cuda/cuda_common.cuh"
#include "common/backend/cuda/cuda_kernels.h"

namespace indexcache::cuda {
namespace {

constexpr int kRowThreads = 256;

// Sum of `v` over the block (blockDim.x a multiple of 32, <= 1024); every thread gets the result.
__device__ float BlockSum(float v, float* shared32) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();  // shared32 may still be read by a previous call
  if (lane == 0) shared32[warp] = v;
  __syncthreads();
  const int warps = blockDim.x / 32;
  float total = 0.0f;
  for (int w = 0; w < warps; ++w) total += shared32[w];
  return total;
}

__global__ void CastKernel(const float* x, int64_t stride, int64_t rows, int64_t cols, __nv_bfloat16* out) {
  const int64_t total = rows * cols;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total; i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t r = i / cols, c = i % cols;
    out[i] = __float2bfloat16(x[r * stride + c]);
  }
}

__global__ void FillKernel(void* data, int64_t stride, int64_t rows, int64_t cols, float value, bool integer) {
  const int64_t total = rows * cols;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total; i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t at = (i / cols) * stride + i % cols;
    if (integer) {
      static_cast<int32_t*>(data)[at] = static_cast<int32_t>(value);
    } else {
      static_cast<float*>(data)[at] = value;
    }
  }
}

__global__ void EmbeddingKernel(AnyRows table, const int32_t* ids, int64_t id_stride, float* out, int64_t out_stride,
                                int64_t cols) {
  const int64_t r = blockIdx.x;
  const int32_t id = ids[r * id_stride];
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) out[r * out_stride + c] = table.at(id, c);
}

// Out may alias x: each element is read before the same thread writes it.
__global__ void RmsNormKernel(const float* x, int64_t x_stride, AnyRows weight, float eps, float* out,
                              int64_t out_stride, int64_t cols) {
  __shared__ float partial[32];
  const float* in = x + blockIdx.x * x_stride;
  float sum_sq = 0.0f;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) sum_sq += in[c] * in[c];
  const float inv = rsqrtf(BlockSum(sum_sq, partial) / static_cast<float>(cols) + eps);
  float* o = out + blockIdx.x * out_stride;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) o[c] = weight.at(0, c) * (in[c] * inv);
}

__global__ void LayerNormKernel(const float* x, int64_t x_stride, AnyRows weight, AnyRows bias, float eps, float* out,
                                int64_t out_stride, int64_t cols) {
  __shared__ float partial[32];
  const float* in = x + blockIdx.x * x_stride;
  float sum = 0.0f;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) sum += in[c];
  const float mean = BlockSum(sum, partial) / static_cast<float>(cols);
  float sq = 0.0f;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) sq += (in[c] - mean) * (in[c] - mean);
  const float inv = rsqrtf(BlockSum(sq, partial) / static_cast<float>(cols) + eps);  // biased variance
  float* o = out + blockIdx.x * out_stride;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) o[c] = (in[c] - mean) * inv * weight.at(0, c) + bias.at(0, c);
}

// One block per row; every head's rope span is read into registers before any is written back
// de-interleaved, so the in-place update never reads a value another thread already rotated.
__global__ void RopeKernel(float* x, int64_t stride, int32_t heads, int32_t head_stride, int32_t rope_offset,
                           int32_t rope_dim, float theta, const int32_t* pos, int64_t pos_stride) {
  const int32_t half = rope_dim / 2;
  const float p = static_cast<float>(pos[blockIdx.x * pos_stride]);
  float* row = x + blockIdx.x * stride;
  const int32_t pairs = heads * half;
  // Each thread handles up to 8 pairs: enough for 64 heads × 64 dims with 256 threads.
  constexpr int kMaxPairs = 8;
  float even[kMaxPairs], odd[kMaxPairs], c[kMaxPairs], s[kMaxPairs];
  int k = 0;
  for (int32_t i = threadIdx.x; i < pairs && k < kMaxPairs; i += blockDim.x, ++k) {
    const int32_t h = i / half, j = i % half;
    const float* v = row + h * head_stride + rope_offset;
    even[k] = v[2 * j];
    odd[k] = v[2 * j + 1];
    // transformers: inv_freq = 1 / theta^(2j / dim) in float32, angle = position · inv_freq.
    const float inv_freq = 1.0f / powf(theta, static_cast<float>(2 * j) / static_cast<float>(rope_dim));
    const float angle = p * inv_freq;
    c[k] = cosf(angle);
    s[k] = sinf(angle);
  }
  __syncthreads();
  k = 0;
  for (int32_t i = threadIdx.x; i < pairs && k < kMaxPairs; i += blockDim.x, ++k) {
    const int32_t h = i / half, j = i % half;
    float* v = row + h * head_stride + rope_offset;
    v[j] = even[k] * c[k] - odd[k] * s[k];
    v[half + j] = odd[k] * c[k] + even[k] * s[k];
  }
}

__global__ void SiluMulKernel(const float* gate_up, int64_t gu_stride, float* out, int64_t out_stride, int64_t rows,
                              int64_t inter) {
  const int64_t total = rows * inter;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total; i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t r = i / inter, c = i % inter;
    const float g = gate_up[r * gu_stride + c], u = gate_up[r * gu_stride + inter + c];
    out[r * out_stride + c] = g / (1.0f + expf(-g)) * u;
  }
}

__global__ void AddKernel(float* x, int64_t x_stride, const float* y, int64_t y_stride, int64_t rows, int64_t cols) {
  const int64_t total = rows * cols;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total; i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t r = i / cols, c = i % cols;
    x[r * x_stride + c] += y[r * y_stride + c];
  }
}

// dst[r] = src[ids[r]] (gather) or dst[ids[r]] = src[r] (scatter) as raw bytes (any dtype), 4 bytes at a
// time when the row allows. A scatter to a negative id writes nothing (padding rows of a decode graph).
__global__ void GatherBytesKernel(const char* src, int64_t src_row_bytes, const int32_t* ids, int64_t id_stride,
                                  char* dst, int64_t dst_row_bytes, int64_t copy_bytes, bool scatter) {
  const int64_t r = blockIdx.x;
  const int64_t id = ids[r * id_stride];
  if (scatter && id < 0) return;
  const char* from = scatter ? src + r * src_row_bytes : src + id * src_row_bytes;
  char* to = scatter ? dst + id * dst_row_bytes : dst + r * dst_row_bytes;
  if (copy_bytes % 4 == 0 && reinterpret_cast<uintptr_t>(from) % 4 == 0 && reinterpret_cast<uintptr_t>(to) % 4 == 0) {
    for (int64_t b = threadIdx.x * 4; b < copy_bytes; b += blockDim.x * 4) {
      *reinterpret_cast<int32_t*>(to + b) = *reinterpret_cast<const int32_t*>(from + b);
    }
  } else {
    for (int64_t b = threadIdx.x; b < copy_bytes; b += blockDim.x) to[b] = from[b];
  }
}

// One block per row: each thread keeps the best (value, lowest column) of its strided columns, then
// the block reduces pairs. `best > v` is false for NaN, so NaN never wins; -1 survives only when no
// value exceeds -inf.
__global__ void ArgMaxKernel(const float* x, int64_t stride, int64_t cols, int32_t* out, int64_t out_stride) {
  const float* row = x + blockIdx.x * stride;
  float best = -INFINITY;
  int32_t at = -1;
  for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
    if (row[j] > best) {  // columns rise along a thread's scan: strict keeps its lowest
      best = row[j];
      at = static_cast<int32_t>(j);
    }
  }
  __shared__ float values[kRowThreads];
  __shared__ int32_t columns[kRowThreads];
  values[threadIdx.x] = best;
  columns[threadIdx.x] = at;
  __syncthreads();
  for (int half = blockDim.x / 2; half > 0; half >>= 1) {
    if (threadIdx.x < half) {
      const float v = values[threadIdx.x + half];
      const int32_t c = columns[threadIdx.x + half];
      const int32_t mine = columns[threadIdx.x];
      if (c >= 0 && (mine < 0 || v > values[threadIdx.x] || (v == values[threadIdx.x] && c < mine))) {
        values[threadIdx.x] = v;
        columns[threadIdx.x] = c;
      }
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) out[blockIdx.x * out_stride] = columns[0];
}

int GridFor(int64_t total) { return static_cast<int>(std::min<int64_t>(CeilDiv(total, 256), 65535)); }

std::string ShapeError(const char* op, const Tensor& a, const Tensor& b) {
  return std::string(op) + ": shapes disagree (" + a.DebugString() + " vs " + b.DebugString() + ")";
}

}  // namespace

std::string CastToBf16(Tensor x, void* out, cudaStream_t stream) {
  if (x.dtype != DType::kF32) return "cast to bf16: input must be f32, got " + x.DebugString();
  if (x.numel() == 0) return {};
  CastKernel<<<GridFor(x.numel()), 256, 0, stream>>>(x.ptr<float>(), x.stride, x.rows, x.cols,
                                                     static_cast<__nv_bfloat16*>(out));
  return LaunchError();
}

std::string Fill(Tensor dst, float value, cudaStream_t stream) {
  if (dst.dtype == DType::kBF16) return "fill: bf16 tensors are weights, not filled";
  if (dst.numel() == 0) return {};
  FillKernel<<<GridFor(dst.numel()), 256, 0, stream>>>(dst.data, dst.stride, dst.rows, dst.cols, value,
                                                       dst.dtype == DType::kI32);
  return LaunchError();
}

std::string Embedding(Tensor table, Tensor ids, Tensor out, cudaStream_t stream) {
  if (!IsFloat(table) || out.dtype != DType::kF32 || ids.dtype != DType::kI32 || table.cols != out.cols ||
      ids.rows != out.rows) {
    return ShapeError("embedding", table, out);
  }
  if (out.rows == 0) return {};
  EmbeddingKernel<<<static_cast<unsigned>(out.rows), kRowThreads, 0, stream>>>(
      AnyRowsOf(table), ids.ptr<int32_t>(), ids.stride, out.ptr<float>(), out.stride, out.cols);
  return LaunchError();
}

std::string RmsNorm(Tensor x, Tensor weight, float eps, Tensor out, cudaStream_t stream) {
  if (x.dtype != DType::kF32 || out.dtype != DType::kF32 || !IsFloat(weight) || weight.cols != x.cols ||
      out.rows != x.rows || out.cols != x.cols) {
    return ShapeError("rms norm", x, weight);
  }
  if (x.rows == 0) return {};
  RmsNormKernel<<<static_cast<unsigned>(x.rows), kRowThreads, 0, stream>>>(x.ptr<float>(), x.stride, AnyRowsOf(weight),
                                                                          eps, out.ptr<float>(), out.stride, x.cols);
  return LaunchError();
}

std::string LayerNorm(Tensor x, Tensor weight, Tensor bias, float eps, Tensor out, cudaStream_t stream) {
  if (x.dtype != DType::kF32 || out.dtype != DType::kF32 || !IsFloat(weight) || !IsFloat(bias) ||
      weight.cols != x.cols || bias.cols != x.cols || out.rows != x.rows || out.cols != x.cols) {
    return ShapeError("layer norm", x, weight);
  }
  if (x.rows == 0) return {};
  LayerNormKernel<<<static_cast<unsigned>(x.rows), kRowThreads, 0, stream>>>(
      x.ptr<float>(), x.stride, AnyRowsOf(weight), AnyRowsOf(bias), eps, out.ptr<float>(), out.stride, x.cols);
  return LaunchError();
}

std::string RopeInterleaved(Tensor x, int32_t heads, int32_t head_stride, int32_t rope_offset, int32_t rope_dim,
                            float theta, Tensor token_pos, cudaStream_t stream) {
  if (x.dtype != DType::kF32 || rope_dim % 2 != 0 || rope_dim <= 0 || heads <= 0 ||
      int64_t{heads - 1} * head_stride + rope_offset + rope_dim > x.cols || !IsColumn(token_pos) ||
      token_pos.rows != x.rows) {
    return "rope: " + x.DebugString() + " cannot hold " + std::to_string(heads) + " heads of rope " +
           std::to_string(rope_dim) + " at stride " + std::to_string(head_stride);
  }
  if (int64_t{heads} * rope_dim / 2 > int64_t{kRowThreads} * 8) return "rope: more than 2048 rotation pairs per row";
  if (x.rows == 0) return {};
  RopeKernel<<<static_cast<unsigned>(x.rows), kRowThreads, 0, stream>>>(x.ptr<float>(), x.stride, heads, head_stride,
                                                                        rope_offset, rope_dim, theta,
                                                                        token_pos.ptr<int32_t>(), token_pos.stride);
  return LaunchError();
}

std::string SiluMul(Tensor gate_up, Tensor out, cudaStream_t stream) {
  if (gate_up.dtype != DType::kF32 || out.dtype != DType::kF32 || gate_up.cols < 2 * out.cols ||
      gate_up.rows != out.rows) {
    return ShapeError("silu·mul", gate_up, out);
  }
  if (out.numel() == 0) return {};
  SiluMulKernel<<<GridFor(out.numel()), 256, 0, stream>>>(gate_up.ptr<float>(), gate_up.stride, out.ptr<float>(),
                                                          out.stride, out.rows, out.cols);
  return LaunchError();
}

std::string Add(Tensor x, Tensor y, cudaStream_t stream) {
  if (x.dtype != DType::kF32 || y.dtype != DType::kF32 || x.rows != y.rows || x.cols != y.cols) {
    return ShapeError("add", x, y);
  }
  if (x.numel() == 0) return {};
  AddKernel<<<GridFor(x.numel()), 256, 0, stream>>>(x.ptr<float>(), x.stride, y.ptr<float>(), y.stride, x.rows,
                                                    x.cols);
  return LaunchError();
}

std::string GatherRows(Tensor src, Tensor row_ids, Tensor dst, cudaStream_t stream) {
  if (src.dtype != dst.dtype || src.cols != dst.cols || !IsColumn(row_ids) || row_ids.rows != dst.rows) {
    return ShapeError("gather rows", src, dst);
  }
  if (dst.rows == 0) return {};
  const int64_t elem = static_cast<int64_t>(DTypeSize(src.dtype));
  GatherBytesKernel<<<static_cast<unsigned>(dst.rows), 128, 0, stream>>>(
      static_cast<const char*>(src.data), src.stride * elem, row_ids.ptr<int32_t>(), row_ids.stride,
      static_cast<char*>(dst.data), dst.stride * elem, dst.cols * elem, /*scatter=*/false);
  return LaunchError();
}

std::string WriteCacheRows(Tensor src, Tensor slot_mapping, Tensor pool, cudaStream_t stream) {
  if (src.dtype != pool.dtype || src.cols != pool.cols || !IsColumn(slot_mapping) || slot_mapping.rows != src.rows) {
    return ShapeError("write cache rows", src, pool);
  }
  if (src.rows == 0) return {};
  const int64_t elem = static_cast<int64_t>(DTypeSize(src.dtype));
  GatherBytesKernel<<<static_cast<unsigned>(src.rows), 128, 0, stream>>>(
      static_cast<const char*>(src.data), src.stride * elem, slot_mapping.ptr<int32_t>(), slot_mapping.stride,
      static_cast<char*>(pool.data), pool.stride * elem, src.cols * elem, /*scatter=*/true);
  return LaunchError();
}

std::string ArgMax(Tensor x, Tensor out, cudaStream_t stream) {
  if (x.dtype != DType::kF32 || !IsColumn(out) || out.rows != x.rows || x.cols > INT32_MAX) {
    return ShapeError("argmax", x, out);
  }
  if (x.rows == 0) return {};
  ArgMaxKernel<<<static_cast<unsigned>(x.rows), kRowThreads, 0, stream>>>(x.ptr<float>(), x.stride, x.cols,
                                                                          out.ptr<int32_t>(), out.stride);
  return LaunchError();
}

PagedRows PagedRowsOf(const BatchLayout& batch) {
  return PagedRows{batch.token_seq.ptr<int32_t>(), batch.token_pos.ptr<int32_t>(), batch.block_tables.ptr<int32_t>(),
                   batch.block_tables.stride, batch.block_size};
}

}  // namespace indexcache::cuda
