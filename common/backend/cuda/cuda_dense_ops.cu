// Row-wise ops of the CUDA backend: casts, fills, embedding lookup, norms, RoPE, SwiGLU, residual add,
// row gathers and paged-cache writes, argmax. All are memory-bound; each runs one block per row (or a
// grid over runs of elements), reads each input once and moves runs of 8 elements with 16-byte accesses
// where the views allow (cuda_packs.cuh). Float tensors are F32 or BF16, each independently: every
// kernel is a template over the storage types of its tensors and computes in f32.
#include <cmath>

#include "common/backend/cuda/cuda_common.cuh"
#include "common/backend/cuda/cuda_kernels.h"
#include "common/backend/cuda/cuda_packs.cuh"

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

// Runs of kPack columns: run i of a [rows, cols] view is row i / RunsPerRow, columns from
// (i % RunsPerRow)·kPack, of which `valid` exist. Grid-stride kernels walk these.
struct RunAt {
  int64_t row, col;
  int valid;
};
__device__ __forceinline__ RunAt RunOf(int64_t i, int64_t cols) {
  const int64_t per_row = (cols + kPack - 1) / kPack;
  const int64_t row = i / per_row, col = (i % per_row) * kPack;
  return RunAt{row, col, static_cast<int>(min(int64_t{kPack}, cols - col))};
}

template <typename T>
__global__ void FillKernel(T* data, int64_t stride, int64_t rows, int64_t cols, T value, bool aligned) {
  const int64_t runs = rows * ((cols + kPack - 1) / kPack);
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < runs; i += int64_t{gridDim.x} * blockDim.x) {
    const RunAt at = RunOf(i, cols);
    T* p = data + at.row * stride + at.col;
    if (aligned && at.valid == kPack) {
      Packed<kPack, T> packed;
#pragma unroll
      for (int j = 0; j < kPack; ++j) packed.e[j] = value;
      *reinterpret_cast<Packed<kPack, T>*>(p) = packed;
    } else {
      for (int j = 0; j < at.valid; ++j) p[j] = value;
    }
  }
}

template <typename TO>
__global__ void EmbeddingKernel(AnyRows table, bool table_aligned, const int32_t* ids, int64_t id_stride, TO* out,
                                int64_t out_stride, int64_t cols, bool out_aligned) {
  const int64_t r = blockIdx.x;
  const int32_t id = ids[r * id_stride];
  for (int64_t c = threadIdx.x * int64_t{kPack}; c < cols; c += blockDim.x * int64_t{kPack}) {
    const int valid = static_cast<int>(min(int64_t{kPack}, cols - c));
    float v[kPack];
    LoadRun(table, id, c, valid, table_aligned && valid == kPack, v);
    StoreRun(out + r * out_stride + c, valid, out_aligned && valid == kPack, v);
  }
}

// Out may alias x (same dtype, checked by the launcher): each element is read before the same thread
// writes it. `aligned`: x, out and weight all allow vector runs.
template <typename TX, typename TO>
__global__ void RmsNormKernel(const TX* x, int64_t x_stride, AnyRows weight, float eps, TO* out, int64_t out_stride,
                              int64_t cols, bool aligned) {
  __shared__ float partial[32];
  const TX* in = x + blockIdx.x * x_stride;
  TO* o = out + blockIdx.x * out_stride;
  float sum_sq = 0.0f;
  for (int64_t c = threadIdx.x * int64_t{kPack}; c < cols; c += blockDim.x * int64_t{kPack}) {
    const int valid = static_cast<int>(min(int64_t{kPack}, cols - c));
    float v[kPack];
    LoadRun(in + c, valid, aligned && valid == kPack, v);
#pragma unroll
    for (int j = 0; j < kPack; ++j) sum_sq += v[j] * v[j];
  }
  const float inv = rsqrtf(BlockSum(sum_sq, partial) / static_cast<float>(cols) + eps);
  for (int64_t c = threadIdx.x * int64_t{kPack}; c < cols; c += blockDim.x * int64_t{kPack}) {
    const int valid = static_cast<int>(min(int64_t{kPack}, cols - c));
    const bool vector = aligned && valid == kPack;
    float v[kPack], w[kPack];
    LoadRun(in + c, valid, vector, v);
    LoadRun(weight, 0, c, valid, vector, w);
#pragma unroll
    for (int j = 0; j < kPack; ++j) v[j] = w[j] * (v[j] * inv);
    StoreRun(o + c, valid, vector, v);
  }
}

template <typename TX, typename TO>
__global__ void LayerNormKernel(const TX* x, int64_t x_stride, AnyRows weight, AnyRows bias, float eps, TO* out,
                                int64_t out_stride, int64_t cols, bool aligned) {
  __shared__ float partial[32];
  const TX* in = x + blockIdx.x * x_stride;
  TO* o = out + blockIdx.x * out_stride;
  float sum = 0.0f;
  for (int64_t c = threadIdx.x * int64_t{kPack}; c < cols; c += blockDim.x * int64_t{kPack}) {
    const int valid = static_cast<int>(min(int64_t{kPack}, cols - c));
    float v[kPack];
    LoadRun(in + c, valid, aligned && valid == kPack, v);
#pragma unroll
    for (int j = 0; j < kPack; ++j) sum += v[j];
  }
  const float mean = BlockSum(sum, partial) / static_cast<float>(cols);
  float sq = 0.0f;
  for (int64_t c = threadIdx.x * int64_t{kPack}; c < cols; c += blockDim.x * int64_t{kPack}) {
    const int valid = static_cast<int>(min(int64_t{kPack}, cols - c));
    float v[kPack];
    LoadRun(in + c, valid, aligned && valid == kPack, v);
#pragma unroll
    for (int j = 0; j < kPack; ++j) sq += j < valid ? (v[j] - mean) * (v[j] - mean) : 0.0f;
  }
  const float inv = rsqrtf(BlockSum(sq, partial) / static_cast<float>(cols) + eps);  // biased variance
  for (int64_t c = threadIdx.x * int64_t{kPack}; c < cols; c += blockDim.x * int64_t{kPack}) {
    const int valid = static_cast<int>(min(int64_t{kPack}, cols - c));
    const bool vector = aligned && valid == kPack;
    float v[kPack], w[kPack], b[kPack];
    LoadRun(in + c, valid, vector, v);
    LoadRun(weight, 0, c, valid, vector, w);
    LoadRun(bias, 0, c, valid, vector, b);
#pragma unroll
    for (int j = 0; j < kPack; ++j) v[j] = (v[j] - mean) * inv * w[j] + b[j];
    StoreRun(o + c, valid, vector, v);
  }
}

// Rotation pairs go four at a time (a quad: 8 interleaved values in, 4 evens' and 4 odds' rotations out).
// One block per row; every quad is read into registers before any is written back de-interleaved, so
// the in-place update never reads a value another thread already rotated. `aligned`: every quad's 8
// values and both 4-value outputs are aligned runs (checked by the launcher).
constexpr int kRopeQuadsPerThread = 4;  // 1024 quads per row: 64 heads × rope 128 with 256 threads
template <typename T>
__global__ void RopeKernel(T* x, int64_t stride, int32_t heads, int32_t head_stride, int32_t rope_offset,
                           int32_t rope_dim, float theta, const int32_t* pos, int64_t pos_stride, bool aligned) {
  const int32_t half = rope_dim / 2, quads_per_head = (half + 3) / 4, quads = heads * quads_per_head;
  const float p = static_cast<float>(pos[blockIdx.x * pos_stride]);
  T* row = x + blockIdx.x * stride;
  float even[kRopeQuadsPerThread][4], odd[kRopeQuadsPerThread][4];
#pragma unroll
  for (int k = 0; k < kRopeQuadsPerThread; ++k) {
    const int32_t i = threadIdx.x + k * blockDim.x;
    if (i >= quads) break;
    const int32_t j0 = i % quads_per_head * 4, valid = min(4, half - j0);
    float v[8];
    LoadRun(row + (i / quads_per_head) * head_stride + rope_offset + 2 * j0, 2 * valid, aligned, v);
#pragma unroll
    for (int t = 0; t < 4; ++t) {
      // transformers: inv_freq = 1 / theta^(2j / dim) in float32, angle = position · inv_freq.
      const float inv_freq = 1.0f / powf(theta, static_cast<float>(2 * (j0 + t)) / static_cast<float>(rope_dim));
      const float angle = p * inv_freq, c = cosf(angle), s = sinf(angle);
      even[k][t] = v[2 * t] * c - v[2 * t + 1] * s;
      odd[k][t] = v[2 * t + 1] * c + v[2 * t] * s;
    }
  }
  __syncthreads();
#pragma unroll
  for (int k = 0; k < kRopeQuadsPerThread; ++k) {
    const int32_t i = threadIdx.x + k * blockDim.x;
    if (i >= quads) break;
    const int32_t j0 = i % quads_per_head * 4, valid = min(4, half - j0);
    T* span = row + (i / quads_per_head) * head_stride + rope_offset;
    StoreRun(span + j0, valid, aligned, even[k]);
    StoreRun(span + half + j0, valid, aligned, odd[k]);
  }
}

template <typename TG, typename TO>
__global__ void SiluMulKernel(const TG* gate_up, int64_t gu_stride, TO* out, int64_t out_stride, int64_t rows,
                              int64_t inter, bool aligned) {
  const int64_t runs = rows * ((inter + kPack - 1) / kPack);
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < runs; i += int64_t{gridDim.x} * blockDim.x) {
    const RunAt at = RunOf(i, inter);
    const bool vector = aligned && at.valid == kPack;
    const TG* gu = gate_up + at.row * gu_stride + at.col;
    float g[kPack], u[kPack];
    LoadRun(gu, at.valid, vector, g);
    LoadRun(gu + inter, at.valid, vector, u);
#pragma unroll
    for (int j = 0; j < kPack; ++j) g[j] = g[j] / (1.0f + expf(-g[j])) * u[j];
    StoreRun(out + at.row * out_stride + at.col, at.valid, vector, g);
  }
}

template <typename TX, typename TY>
__global__ void AddKernel(TX* x, int64_t x_stride, const TY* y, int64_t y_stride, int64_t rows, int64_t cols,
                          bool aligned) {
  const int64_t runs = rows * ((cols + kPack - 1) / kPack);
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < runs; i += int64_t{gridDim.x} * blockDim.x) {
    const RunAt at = RunOf(i, cols);
    const bool vector = aligned && at.valid == kPack;
    TX* xp = x + at.row * x_stride + at.col;
    float a[kPack], b[kPack];
    LoadRun(xp, at.valid, vector, a);
    LoadRun(y + at.row * y_stride + at.col, at.valid, vector, b);
#pragma unroll
    for (int j = 0; j < kPack; ++j) a[j] += b[j];
    StoreRun(xp, at.valid, vector, a);
  }
}

// Row r of the copy: dst[r] = src[ids[r]] (gather), dst[ids[r]] = src[r] (scatter; a negative id writes
// nothing: padding rows of a decode graph), or dst[r] = src[r] (ids null). Returns false to skip the row.
struct RowPair {
  int64_t from, to;
};
__device__ __forceinline__ bool RowsOfCopy(const int32_t* ids, int64_t id_stride, bool scatter, RowPair* rows) {
  const int64_t r = blockIdx.x;
  const int64_t id = ids == nullptr ? r : ids[r * id_stride];
  if (scatter && id < 0) return false;
  *rows = scatter ? RowPair{r, id} : RowPair{id, r};
  return true;
}

// Equal dtypes: a raw copy of `copy_bytes` per row in pieces of sizeof(Piece) bytes (16, 4 or 1: the
// widest that every row start and the row length allow).
template <typename Piece>
__global__ void CopyRowBytesKernel(const char* src, int64_t src_row_bytes, const int32_t* ids, int64_t id_stride,
                                   char* dst, int64_t dst_row_bytes, int64_t copy_bytes, bool scatter) {
  RowPair rows;
  if (!RowsOfCopy(ids, id_stride, scatter, &rows)) return;
  const auto* from = reinterpret_cast<const Piece*>(src + rows.from * src_row_bytes);
  auto* to = reinterpret_cast<Piece*>(dst + rows.to * dst_row_bytes);
  const int64_t pieces = copy_bytes / static_cast<int64_t>(sizeof(Piece));
  for (int64_t i = threadIdx.x; i < pieces; i += blockDim.x) to[i] = from[i];
}

// F32 ↔ BF16: widened exactly, or rounded to nearest even.
template <typename TS, typename TD>
__global__ void ConvertRowsKernel(const TS* src, int64_t src_stride, const int32_t* ids, int64_t id_stride, TD* dst,
                                  int64_t dst_stride, int64_t cols, bool scatter, bool aligned) {
  RowPair rows;
  if (!RowsOfCopy(ids, id_stride, scatter, &rows)) return;
  const TS* from = src + rows.from * src_stride;
  TD* to = dst + rows.to * dst_stride;
  for (int64_t c = threadIdx.x * int64_t{kPack}; c < cols; c += blockDim.x * int64_t{kPack}) {
    const int valid = static_cast<int>(min(int64_t{kPack}, cols - c));
    float v[kPack];
    LoadRun(from + c, valid, aligned && valid == kPack, v);
    StoreRun(to + c, valid, aligned && valid == kPack, v);
  }
}

// One block per row: each thread keeps the best (value, lowest column) of its runs, then the block
// reduces pairs. `best > v` is false for NaN, so NaN never wins; -1 survives only when no value exceeds
// -inf.
template <typename T>
__global__ void ArgMaxKernel(const T* x, int64_t stride, int64_t cols, int32_t* out, int64_t out_stride,
                             bool aligned) {
  const T* row = x + blockIdx.x * stride;
  float best = -INFINITY;
  int32_t at = -1;
  // Columns rise along a thread's scan (its runs in order, each run in order): strict keeps its lowest.
  for (int64_t c = threadIdx.x * int64_t{kPack}; c < cols; c += blockDim.x * int64_t{kPack}) {
    const int valid = static_cast<int>(min(int64_t{kPack}, cols - c));
    float v[kPack];
    LoadRun(row + c, valid, aligned && valid == kPack, v);
#pragma unroll
    for (int j = 0; j < kPack; ++j) {
      if (j < valid && v[j] > best) {
        best = v[j];
        at = static_cast<int32_t>(c + j);
      }
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
int64_t RunsOf(const Tensor& t) { return t.rows * CeilDiv(t.cols, kPack); }

std::string ShapeError(const char* op, const Tensor& a, const Tensor& b) {
  return std::string(op) + ": shapes disagree (" + a.DebugString() + " vs " + b.DebugString() + ")";
}

// In-place ops may pass the same tensor as input and output, but never one memory as two dtypes.
bool AliasedAcrossDtypes(const Tensor& a, const Tensor& b) { return a.data == b.data && a.dtype != b.dtype; }

// dst rows from src rows (see RowsOfCopy), converting F32 ↔ BF16; equal dtypes copy raw bytes (I32
// too). The caller has checked shapes.
std::string CopyRows(const char* op, Tensor src, const int32_t* ids, int64_t id_stride, Tensor dst, bool scatter,
                     int64_t rows, cudaStream_t stream) {
  if ((src.dtype == DType::kI32) != (dst.dtype == DType::kI32)) {
    return std::string(op) + ": i32 rows copy only to i32 (" + src.DebugString() + " → " + dst.DebugString() + ")";
  }
  if (rows == 0 || src.cols == 0) return {};
  const auto grid = static_cast<unsigned>(rows);
  if (src.dtype == dst.dtype) {
    const int64_t elem = static_cast<int64_t>(DTypeSize(src.dtype));
    const int64_t src_row = src.stride * elem, dst_row = dst.stride * elem, bytes = src.cols * elem;
    const auto fits = [&](int64_t piece) {
      return reinterpret_cast<uintptr_t>(src.data) % piece == 0 && reinterpret_cast<uintptr_t>(dst.data) % piece == 0 &&
             src_row % piece == 0 && dst_row % piece == 0 && bytes % piece == 0;
    };
    const auto* from = static_cast<const char*>(src.data);
    auto* to = static_cast<char*>(dst.data);
    if (fits(16)) {
      CopyRowBytesKernel<uint4><<<grid, 128, 0, stream>>>(from, src_row, ids, id_stride, to, dst_row, bytes, scatter);
    } else if (fits(4)) {
      CopyRowBytesKernel<uint32_t><<<grid, 128, 0, stream>>>(from, src_row, ids, id_stride, to, dst_row, bytes, scatter);
    } else {
      CopyRowBytesKernel<uint8_t><<<grid, 128, 0, stream>>>(from, src_row, ids, id_stride, to, dst_row, bytes, scatter);
    }
    return LaunchError();
  }
  const bool aligned = RunsAligned(src) && RunsAligned(dst);
  DispatchFloat(src.dtype, [&](auto s) {
    using TS = decltype(s);
    DispatchFloat(dst.dtype, [&](auto d) {
      using TD = decltype(d);
      ConvertRowsKernel<TS, TD><<<grid, 128, 0, stream>>>(src.ptr<TS>(), src.stride, ids, id_stride, dst.ptr<TD>(),
                                                          dst.stride, src.cols, scatter, aligned);
      return 0;
    });
    return 0;
  });
  return LaunchError();
}

}  // namespace

std::string CastToBf16(Tensor x, void* out, cudaStream_t stream) {
  if (x.dtype != DType::kF32) return "cast to bf16: input must be f32, got " + x.DebugString();
  return CopyRows("cast to bf16", x, nullptr, 0, Tensor::Matrix(out, DType::kBF16, x.rows, x.cols),
                  /*scatter=*/false, x.rows, stream);
}

std::string Fill(Tensor dst, float value, cudaStream_t stream) {
  if (dst.numel() == 0) return {};
  const bool aligned = RunsAligned(dst);
  const unsigned grid = GridFor(RunsOf(dst));
  if (dst.dtype == DType::kI32) {
    FillKernel<<<grid, 256, 0, stream>>>(dst.ptr<int32_t>(), dst.stride, dst.rows, dst.cols,
                                         static_cast<int32_t>(value), aligned);
  } else if (dst.dtype == DType::kBF16) {
    FillKernel<<<grid, 256, 0, stream>>>(dst.ptr<__nv_bfloat16>(), dst.stride, dst.rows, dst.cols,
                                         __float2bfloat16_rn(value), aligned);
  } else {
    FillKernel<<<grid, 256, 0, stream>>>(dst.ptr<float>(), dst.stride, dst.rows, dst.cols, value, aligned);
  }
  return LaunchError();
}

std::string Embedding(Tensor table, Tensor ids, Tensor out, cudaStream_t stream) {
  if (!IsFloat(table) || !IsFloat(out) || !IsColumn(ids) || table.cols != out.cols || ids.rows != out.rows) {
    return ShapeError("embedding", table, out);
  }
  if (out.rows == 0) return {};
  return DispatchFloat(out.dtype, [&](auto o) {
    using TO = decltype(o);
    EmbeddingKernel<TO><<<static_cast<unsigned>(out.rows), kRowThreads, 0, stream>>>(
        AnyRowsOf(table), RunsAligned(table), ids.ptr<int32_t>(), ids.stride, out.ptr<TO>(), out.stride, out.cols,
        RunsAligned(out));
    return LaunchError();
  });
}

std::string RmsNorm(Tensor x, Tensor weight, float eps, Tensor out, cudaStream_t stream) {
  if (!IsFloat(x) || !IsFloat(out) || !IsFloat(weight) || weight.cols != x.cols || out.rows != x.rows ||
      out.cols != x.cols || AliasedAcrossDtypes(x, out)) {
    return ShapeError("rms norm", x, out);
  }
  if (x.rows == 0) return {};
  const bool aligned = RunsAligned(x) && RunsAligned(out) && RunsAligned(weight);
  return DispatchFloat(x.dtype, [&](auto xt) {
    using TX = decltype(xt);
    return DispatchFloat(out.dtype, [&](auto ot) {
      using TO = decltype(ot);
      RmsNormKernel<TX, TO><<<static_cast<unsigned>(x.rows), kRowThreads, 0, stream>>>(
          x.ptr<TX>(), x.stride, AnyRowsOf(weight), eps, out.ptr<TO>(), out.stride, x.cols, aligned);
      return LaunchError();
    });
  });
}

std::string LayerNorm(Tensor x, Tensor weight, Tensor bias, float eps, Tensor out, cudaStream_t stream) {
  if (!IsFloat(x) || !IsFloat(out) || !IsFloat(weight) || !IsFloat(bias) || weight.cols != x.cols ||
      bias.cols != x.cols || out.rows != x.rows || out.cols != x.cols || AliasedAcrossDtypes(x, out)) {
    return ShapeError("layer norm", x, out);
  }
  if (x.rows == 0) return {};
  const bool aligned = RunsAligned(x) && RunsAligned(out) && RunsAligned(weight) && RunsAligned(bias);
  return DispatchFloat(x.dtype, [&](auto xt) {
    using TX = decltype(xt);
    return DispatchFloat(out.dtype, [&](auto ot) {
      using TO = decltype(ot);
      LayerNormKernel<TX, TO><<<static_cast<unsigned>(x.rows), kRowThreads, 0, stream>>>(
          x.ptr<TX>(), x.stride, AnyRowsOf(weight), AnyRowsOf(bias), eps, out.ptr<TO>(), out.stride, x.cols, aligned);
      return LaunchError();
    });
  });
}

std::string RopeInterleaved(Tensor x, int32_t heads, int32_t head_stride, int32_t rope_offset, int32_t rope_dim,
                            float theta, Tensor token_pos, cudaStream_t stream) {
  if (!IsFloat(x) || rope_dim % 2 != 0 || rope_dim <= 0 || heads <= 0 || head_stride < 0 || rope_offset < 0 ||
      int64_t{heads - 1} * head_stride + rope_offset + rope_dim > x.cols || !IsColumn(token_pos) ||
      token_pos.rows != x.rows) {
    return "rope: " + x.DebugString() + " cannot hold " + std::to_string(heads) + " heads of rope " +
           std::to_string(rope_dim) + " at stride " + std::to_string(head_stride);
  }
  const int64_t quads = int64_t{heads} * CeilDiv(rope_dim / 2, 4);
  if (quads > int64_t{kRowThreads} * kRopeQuadsPerThread) {
    return "rope: heads · ⌈rope_dim / 8⌉ = " + std::to_string(quads) + " exceeds " +
           std::to_string(kRowThreads * kRopeQuadsPerThread);
  }
  if (x.rows == 0) return {};
  // Quads start at even multiples of 4 pairs: whole aligned runs when heads and spans start on runs and
  // the odds' half starts on a 4-element boundary.
  const bool aligned = RunsAligned(x) && head_stride % kPack == 0 && rope_offset % kPack == 0 && rope_dim % 8 == 0;
  return DispatchFloat(x.dtype, [&](auto xt) {
    using T = decltype(xt);
    RopeKernel<T><<<static_cast<unsigned>(x.rows), kRowThreads, 0, stream>>>(
        x.ptr<T>(), x.stride, heads, head_stride, rope_offset, rope_dim, theta, token_pos.ptr<int32_t>(),
        token_pos.stride, aligned);
    return LaunchError();
  });
}

std::string SiluMul(Tensor gate_up, Tensor out, cudaStream_t stream) {
  if (!IsFloat(gate_up) || !IsFloat(out) || gate_up.cols < 2 * out.cols || gate_up.rows != out.rows) {
    return ShapeError("silu·mul", gate_up, out);
  }
  if (out.numel() == 0) return {};
  const bool aligned = RunsAligned(gate_up) && RunsAligned(out) && out.cols % kPack == 0;
  return DispatchFloat(gate_up.dtype, [&](auto gt) {
    using TG = decltype(gt);
    return DispatchFloat(out.dtype, [&](auto ot) {
      using TO = decltype(ot);
      SiluMulKernel<TG, TO><<<GridFor(RunsOf(out)), 256, 0, stream>>>(gate_up.ptr<TG>(), gate_up.stride,
                                                                      out.ptr<TO>(), out.stride, out.rows, out.cols,
                                                                      aligned);
      return LaunchError();
    });
  });
}

std::string Add(Tensor x, Tensor y, cudaStream_t stream) {
  if (!IsFloat(x) || !IsFloat(y) || x.rows != y.rows || x.cols != y.cols) return ShapeError("add", x, y);
  if (x.numel() == 0) return {};
  const bool aligned = RunsAligned(x) && RunsAligned(y);
  return DispatchFloat(x.dtype, [&](auto xt) {
    using TX = decltype(xt);
    return DispatchFloat(y.dtype, [&](auto yt) {
      using TY = decltype(yt);
      AddKernel<TX, TY><<<GridFor(RunsOf(x)), 256, 0, stream>>>(x.ptr<TX>(), x.stride, y.ptr<TY>(), y.stride, x.rows,
                                                                x.cols, aligned);
      return LaunchError();
    });
  });
}

std::string GatherRows(Tensor src, Tensor row_ids, Tensor dst, cudaStream_t stream) {
  if (src.cols != dst.cols || !IsColumn(row_ids) || row_ids.rows != dst.rows) {
    return ShapeError("gather rows", src, dst);
  }
  return CopyRows("gather rows", src, row_ids.ptr<int32_t>(), row_ids.stride, dst, /*scatter=*/false, dst.rows,
                  stream);
}

std::string WriteCacheRows(Tensor src, Tensor slot_mapping, Tensor pool, cudaStream_t stream) {
  if (src.cols != pool.cols || !IsColumn(slot_mapping) || slot_mapping.rows != src.rows) {
    return ShapeError("write cache rows", src, pool);
  }
  return CopyRows("write cache rows", src, slot_mapping.ptr<int32_t>(), slot_mapping.stride, pool, /*scatter=*/true,
                  src.rows, stream);
}

std::string ArgMax(Tensor x, Tensor out, cudaStream_t stream) {
  if (!IsFloat(x) || !IsColumn(out) || out.rows != x.rows || x.cols > INT32_MAX) return ShapeError("argmax", x, out);
  if (x.rows == 0) return {};
  return DispatchFloat(x.dtype, [&](auto xt) {
    using T = decltype(xt);
    ArgMaxKernel<T><<<static_cast<unsigned>(x.rows), kRowThreads, 0, stream>>>(x.ptr<T>(), x.stride, x.cols,
                                                                               out.ptr<int32_t>(), out.stride,
                                                                               RunsAligned(x));
    return LaunchError();
  });
}

PagedRows PagedRowsOf(const BatchLayout& batch) {
  return PagedRows{batch.token_seq.ptr<int32_t>(), batch.token_pos.ptr<int32_t>(), batch.block_tables.ptr<int32_t>(),
                   batch.block_tables.stride, batch.block_size};
}

}  // namespace indexcache::cuda
