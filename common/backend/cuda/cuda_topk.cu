// Per-row top-k by radix select. Each candidate is a 64-bit key — the score mapped to an unsigned
// integer that orders like the float, then the bit-inverted column — so keys are distinct, larger
// key = better score, and equal scores prefer the lower column. Six digit passes (11, 11, 10 bits of
// the score, then 11, 11, 10 of the column) narrow the candidates; at each pass the keys above the
// threshold digit are selected outright, the ones on it go on. The first pass reads the row from
// global memory; once the threshold bin holds at most kCapacity keys they move to shared memory, so a
// row is usually read twice. The k selected keys are then sorted (bitonic, in shared memory) so the
// output is best first.
#include <cub/block/block_scan.cuh>

#include "common/backend/cuda/cuda_common.cuh"
#include "common/backend/cuda/cuda_kernels.h"

namespace indexcache::cuda {
namespace {

constexpr int kThreads = 1024;
constexpr int kBins = 2048;  // 11-bit digits
constexpr int kBinsPerThread = kBins / kThreads;
constexpr int kCapacity = 4096;  // candidate keys held in shared memory (per buffer)
constexpr int kMaxK = 4096;
constexpr int kPasses = 6;
__constant__ int kShift[kPasses] = {53, 42, 32, 21, 10, 0};
__constant__ int kBits[kPasses] = {11, 11, 10, 11, 11, 10};

__device__ __forceinline__ uint64_t KeyOf(float score, int32_t column) {
  uint32_t u = __float_as_uint(score);
  u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  return (static_cast<uint64_t>(u) << 32) | static_cast<uint32_t>(~static_cast<uint32_t>(column));
}

__device__ __forceinline__ int32_t ColumnOf(uint64_t key) {
  return static_cast<int32_t>(~static_cast<uint32_t>(key));
}

// Calls fn(score, column) for every column of the row, reading four scores per load when the row
// is 16-byte aligned (the common case: logits rows of a multiple-of-4 width).
template <typename Fn>
__device__ __forceinline__ void ForEachScore(const float* row, int32_t length, Fn&& fn) {
  int32_t start = 0;
  if ((reinterpret_cast<uintptr_t>(row) & 15) == 0) {
    const int32_t quads = length / 4;
    const float4* row4 = reinterpret_cast<const float4*>(row);
    for (int32_t i = threadIdx.x; i < quads; i += kThreads) {
      const float4 v = row4[i];
      fn(v.x, 4 * i);
      fn(v.y, 4 * i + 1);
      fn(v.z, 4 * i + 2);
      fn(v.w, 4 * i + 3);
    }
    start = quads * 4;
  }
  for (int32_t s = start + threadIdx.x; s < length; s += kThreads) fn(row[s], s);
}

struct TopKShared {
  int hist[kBins];
  int threshold_bin, above, at_bin;
  int selected, next_count;
  typename cub::BlockScan<int, kThreads>::TempStorage scan;
};

__global__ void __launch_bounds__(kThreads) RowTopKKernel(const float* logits, int64_t logits_stride,
                                                          const int32_t* token_pos, int32_t* out, int64_t out_stride,
                                                          int32_t out_cols) {
  extern __shared__ __align__(16) unsigned char dynamic[];
  auto* selected = reinterpret_cast<uint64_t*>(dynamic);  // [sort_size]
  __shared__ TopKShared sh;
  const int tid = threadIdx.x;
  const int64_t r = blockIdx.x;
  const float* row = logits + r * logits_stride;
  const int32_t length = token_pos[r] + 1;
  const int32_t k = min(out_cols, length);
  int sort_size = 1;
  while (sort_size < k) sort_size <<= 1;
  // Candidate buffers follow the selection.
  uint64_t* cand[2] = {selected + sort_size, selected + sort_size + kCapacity};

  if (tid == 0) sh.selected = 0;
  __syncthreads();
  if (length <= k) {
    for (int32_t s = tid; s < length; s += kThreads) selected[s] = KeyOf(row[s], s);
    __syncthreads();
  } else {
    uint64_t prefix = 0, prefix_mask = 0;
    int needed = k;
    bool in_shared = false;
    int count = 0, buf = 0;  // candidates in cand[buf] when in_shared
    for (int pass = 0; pass < kPasses && needed > 0; ++pass) {
      const int shift = kShift[pass];
      const uint64_t digit_mask = (uint64_t{1} << kBits[pass]) - 1;
      for (int b = tid; b < kBins; b += kThreads) sh.hist[b] = 0;
      __syncthreads();
      if (in_shared) {
        for (int i = tid; i < count; i += kThreads) atomicAdd(&sh.hist[(cand[buf][i] >> shift) & digit_mask], 1);
      } else {
        ForEachScore(row, length, [&](float score, int32_t s) {
          const uint64_t key = KeyOf(score, s);
          if ((key & prefix_mask) == prefix) atomicAdd(&sh.hist[(key >> shift) & digit_mask], 1);
        });
      }
      __syncthreads();
      // Keys in bins above each bin: an exclusive scan over the bins from the top.
      int items[kBinsPerThread], above[kBinsPerThread];
      for (int j = 0; j < kBinsPerThread; ++j) items[j] = sh.hist[kBins - 1 - (tid * kBinsPerThread + j)];
      cub::BlockScan<int, kThreads>(sh.scan).ExclusiveSum(items, above);
      for (int j = 0; j < kBinsPerThread; ++j) {
        if (above[j] < needed && above[j] + items[j] >= needed) {
          sh.threshold_bin = kBins - 1 - (tid * kBinsPerThread + j);
          sh.above = above[j];
          sh.at_bin = items[j];
        }
      }
      if (tid == 0) sh.next_count = 0;
      __syncthreads();
      const uint64_t bin = static_cast<uint64_t>(sh.threshold_bin);
      const int above_count = sh.above, at_bin = sh.at_bin;
      const bool take_bin = above_count + at_bin == needed;  // the whole bin fits: done after this pass
      const bool next_shared = in_shared || at_bin <= kCapacity;
      uint64_t* next = cand[buf ^ 1];
      auto route = [&](uint64_t key) {
        const uint64_t d = (key >> shift) & digit_mask;
        if (d > bin || (d == bin && take_bin)) {
          selected[atomicAdd(&sh.selected, 1)] = key;
        } else if (d == bin && next_shared) {
          next[atomicAdd(&sh.next_count, 1)] = key;
        }
      };
      if (in_shared) {
        for (int i = tid; i < count; i += kThreads) route(cand[buf][i]);
      } else {
        ForEachScore(row, length, [&](float score, int32_t s) {
          const uint64_t key = KeyOf(score, s);
          if ((key & prefix_mask) == prefix) route(key);
        });
      }
      __syncthreads();
      needed = take_bin ? 0 : needed - above_count;
      prefix |= bin << shift;
      prefix_mask |= digit_mask << shift;
      if (next_shared) {
        count = sh.next_count;
        buf ^= 1;
        in_shared = true;
      }
      __syncthreads();
    }
  }
  // Sort the k selected keys descending (padding with 0, below every real key).
  for (int i = k + tid; i < sort_size; i += kThreads) selected[i] = 0;
  __syncthreads();
  for (int size = 2; size <= sort_size; size <<= 1) {
    for (int stride = size / 2; stride > 0; stride >>= 1) {
      for (int i = tid; i < sort_size / 2; i += kThreads) {
        const int lo = 2 * i - (i & (stride - 1));
        const int hi = lo + stride;
        const bool descending = (lo & size) == 0;
        const uint64_t a = selected[lo], b = selected[hi];
        if ((a < b) == descending) {
          selected[lo] = b;
          selected[hi] = a;
        }
      }
      __syncthreads();
    }
  }
  for (int i = tid; i < out_cols; i += kThreads) out[r * out_stride + i] = i < k ? ColumnOf(selected[i]) : -1;
}

}  // namespace

std::string RowTopK(Tensor logits, const int32_t* token_pos, Tensor out, cudaStream_t stream) {
  if (logits.dtype != DType::kF32 || out.dtype != DType::kI32 || out.rows != logits.rows) {
    return "top-k: logits " + logits.DebugString() + " and output " + out.DebugString() + " disagree";
  }
  if (out.cols > kMaxK) return "top-k: k = " + std::to_string(out.cols) + " exceeds " + std::to_string(kMaxK);
  if (out.rows == 0 || out.cols == 0) return {};
  int sort_size = 1;
  while (sort_size < out.cols) sort_size <<= 1;
  const size_t shared = sizeof(uint64_t) * (sort_size + 2 * kCapacity);
  cudaFuncSetAttribute(RowTopKKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(shared));
  RowTopKKernel<<<static_cast<unsigned>(out.rows), kThreads, shared, stream>>>(
      logits.ptr<float>(), logits.stride, token_pos, out.ptr<int32_t>(), out.stride, static_cast<int32_t>(out.cols));
  return LaunchError();
}

}  // namespace indexcache::cuda
