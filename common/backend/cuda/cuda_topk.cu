// Per-row top-k by radix select, reading each row from global memory once.
//
// Each candidate is a 64-bit key — the score mapped to an unsigned integer that orders like the float
// (-0 folded onto +0, as float comparison has it), then the bit-inverted column — so keys are
// distinct, a larger key is a better score, and equal scores prefer the lower column. A block of 512
// threads owns a row and keeps a candidate buffer of k + 8192 keys in shared memory:
//  - The last min(length, capacity) columns are loaded into the buffer as they are, their first
//    digit counted on the way. A row that fits (every row up to 8K + k columns) is therefore read
//    once and never touched in global memory again.
//  - For a longer row the buffer is cut to its k best keys by radix select, which leaves a floor F
//    (exactly k buffered keys are ≥ F). The rest of the row streams by in rounds of 8192 columns
//    (from the end of the row towards column 0: recent tokens tend to score high, which raises F
//    early); a column is appended only if its key is ≥ F, so on typical rows a few thousand of 128K
//    columns are kept. A round that would overflow the buffer is dropped, the buffer cut again (F
//    rises) and the round read again: slower on adversarial rows (scores rising towards column 0),
//    never wrong.
//  - The final radix select (six digits of 11/11/10 bits over the score, then the column; it stops at
//    the first digit whose threshold bin is taken whole) picks the k winners.
//  - Best-first order without a comparison sort: the winners are counted into 2048 buckets by their
//    key's offset above the smallest winner (scaled, so buckets follow key order), scattered bucket
//    by bucket, and each winner's rank is its bucket's start plus the number of better keys in its
//    own bucket. Buckets hold a few keys on rows of distinct scores; equal scores fall apart by
//    column, since the key includes it.
// Lanes that keep keys reserve their slots once per warp (a warp scan and one atomic), not per key.
// Launch configuration depends only on the shapes (rows, k); one block per row, two blocks per SM.
#include <cub/block/block_scan.cuh>

#include <atomic>

#include "common/backend/cuda/cuda_common.cuh"
#include "common/backend/cuda/cuda_kernels.h"

namespace indexcache::cuda {
namespace {

constexpr int kThreads = 512;
constexpr int kWarpSize = 32;
constexpr int kBins = 2048;  // 11-bit digits; also the ordering buckets
constexpr int kBinsPerThread = kBins / kThreads;
constexpr int kQuadsPerThread = 4;                      // float4 loads in flight per thread per round
constexpr int kRound = kThreads * kQuadsPerThread * 4;  // columns per filter round
constexpr int kMaxK = 4096;
constexpr int kPasses = 6;
__constant__ int kShift[kPasses] = {53, 42, 32, 21, 10, 0};
static_assert(kRound >= kBins, "the ordering's bucket cursors live in the buffer beyond the k winners");

// Buffer room: after a cut it holds k keys, and a whole round must still fit beside them.
// Rounded to a multiple of 4 so the buffer's second array stays 16-byte aligned.
__host__ __device__ constexpr int32_t CapacityFor(int32_t k) { return ((k + 3) & ~3) + kRound; }

static_assert(CapacityFor(kMaxK) <= 32 * kThreads, "Gather marks a thread's buffer keys in one 32-bit mask");

__host__ __device__ constexpr size_t SharedBytesFor(int32_t k) {
  return sizeof(uint32_t) * 2 * (static_cast<size_t>(CapacityFor(k)) + static_cast<size_t>(k));
}

__device__ __forceinline__ uint32_t ScoreKey(float score) {
  uint32_t u = __float_as_uint(score);
  if (score == 0.0f) u = 0;
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ uint64_t Compose(uint32_t score_key, uint32_t inverted_column) {
  return (static_cast<uint64_t>(score_key) << 32) | inverted_column;
}

struct TopKShared {
  int hist[kBins];
  int round_added[3];  // rotating per-round append counters (see FilterRounds)
  int gathered;
  int threshold_bin, above, at_bin;
  unsigned long long key_min, key_max;
  typename cub::BlockScan<int, kThreads>::TempStorage scan;
};

// The row's candidate keys in shared memory, split into score keys and inverted columns.
struct Candidates {
  uint32_t* keys;
  uint32_t* ncols;
};

// Reserves `mine` consecutive slots for each lane of the warp in a block-wide list whose length
// *counter counts: one atomic per warp. Returns the lane's first slot. All 32 lanes call it together.
__device__ __forceinline__ int ReserveSlots(int mine, int* counter) {
  const int lane = threadIdx.x % kWarpSize;
  int inclusive = mine;
  for (int offset = 1; offset < kWarpSize; offset *= 2) {
    const int other = __shfl_up_sync(0xffffffffu, inclusive, offset);
    if (lane >= offset) inclusive += other;
  }
  int first = 0;
  if (lane == kWarpSize - 1) first = atomicAdd(counter, inclusive);
  return __shfl_sync(0xffffffffu, first, kWarpSize - 1) + inclusive - mine;
}

// Counts the first digit (the score key's top 11 bits: sign, exponent, two mantissa bits) of the valid
// lanes into hist. Real scores share a handful of those values, so lanes of a warp often add to one
// bin; combining them first with __match_any_sync was measured slower (8K rows: 0.175 ms against
// 0.121 ms, bench/results/topk-20261122-105159.md) than letting the atomics serialise.
__device__ __forceinline__ void CountFirstDigit(uint32_t key, bool valid, int* hist) {
  if (valid) atomicAdd(&hist[key >> 21], 1);
}

// Four consecutive scores starting at column c (a multiple of 4): one 16-byte load when the row is
// 16-byte aligned.
__device__ __forceinline__ float4 LoadQuad(const float* row, int32_t c, bool aligned) {
  if (aligned) return __ldg(reinterpret_cast<const float4*>(row + c));
  return make_float4(__ldg(row + c), __ldg(row + c + 1), __ldg(row + c + 2), __ldg(row + c + 3));
}

// Radix select over the `count` buffered keys: returns a floor F such that exactly `k` of them are
// ≥ F (F is the k-th largest key with the bits below the deciding digit cleared). k ≤ count.
// first_counted: sh.hist already holds the first digit's counts of these keys (the fill made them).
__device__ uint64_t SelectFloor(Candidates c, int count, int k, bool first_counted, TopKShared& sh) {
  const int tid = threadIdx.x;
  uint64_t prefix = 0;
  int needed = k;
  for (int pass = 0; pass < kPasses; ++pass) {
    const int shift = kShift[pass];
    const int high = pass == 0 ? 64 : kShift[pass - 1];  // bits at and above `high` are decided
    const uint64_t digit_mask = (uint64_t{1} << (high - shift)) - 1;
    if (pass > 0 || !first_counted) {
      for (int b = tid; b < kBins; b += kThreads) sh.hist[b] = 0;
      __syncthreads();
      if (pass == 0) {
        for (int i0 = 0; i0 < count; i0 += kThreads) {
          const int i = i0 + tid;
          CountFirstDigit(i < count ? c.keys[i] : 0, i < count, sh.hist);
        }
      } else {
        for (int i = tid; i < count; i += kThreads) {
          // The first three digits lie in the score key; the column is read only once it matters.
          const uint64_t key = pass < 3 ? static_cast<uint64_t>(c.keys[i]) << 32 : Compose(c.keys[i], c.ncols[i]);
          if ((key >> high) == (prefix >> high)) atomicAdd(&sh.hist[(key >> shift) & digit_mask], 1);
        }
      }
      __syncthreads();
    }
    // Keys in the bins above each bin: an exclusive scan over the bins from the top.
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
    __syncthreads();
    prefix |= static_cast<uint64_t>(sh.threshold_bin) << shift;
    needed -= sh.above;
    // The whole threshold bin is needed: the k keys are exactly those ≥ prefix. The last digit's bins
    // hold one key each (keys are distinct), so this ends the loop at the latest there.
    if (needed == sh.at_bin) break;
  }
  return prefix;
}

// Moves the buffered keys ≥ floor (exactly k of them) into `to`: each thread marks its keys in a
// bit mask, then writes them at slots reserved once per warp.
__device__ void Gather(Candidates from, int count, uint64_t floor, Candidates to, TopKShared& sh) {
  const int tid = threadIdx.x;
  uint32_t take = 0;
  for (int j = 0; j * kThreads < count; ++j) {
    const int i = j * kThreads + tid;
    if (i < count && Compose(from.keys[i], from.ncols[i]) >= floor) take |= 1u << j;
  }
  if (!__any_sync(0xffffffffu, take != 0)) return;
  int slot = ReserveSlots(__popc(take), &sh.gathered);
  for (; take != 0; take &= take - 1) {
    const int i = (__ffs(take) - 1) * kThreads + tid;
    to.keys[slot] = from.keys[i];
    to.ncols[slot] = from.ncols[i];
    ++slot;
  }
}

// Cuts the buffer to its k best keys (kept at its start) and returns the new floor. count > k.
__device__ uint64_t Cut(Candidates buffer, int count, int k, bool first_counted, Candidates selection,
                        TopKShared& sh) {
  if (threadIdx.x == 0) sh.gathered = 0;  // ordered before Gather by SelectFloor's barriers
  const uint64_t floor = SelectFloor(buffer, count, k, first_counted, sh);
  Gather(buffer, count, floor, selection, sh);
  __syncthreads();
  for (int i = threadIdx.x; i < k; i += kThreads) {
    buffer.keys[i] = selection.keys[i];
    buffer.ncols[i] = selection.ncols[i];
  }
  __syncthreads();
  return floor;
}

// Streams columns [0, end) of the row (end a multiple of 4) through the floor in rounds of kRound
// columns, last round first, appending survivors to the buffer, which the fill left holding `count`
// keys with their first digit counted. Returns the buffer's final count.
__device__ int FilterRounds(const float* row, bool aligned, int32_t end, Candidates buffer, int count, int k,
                            int capacity, Candidates selection, TopKShared& sh) {
  const int tid = threadIdx.x;
  uint64_t floor = Cut(buffer, count, k, true, selection, sh);
  count = k;
  // Round r appends through round_added[r % 3] and clears the counter of round r + 1, last read
  // after the barrier of round r - 2, so one barrier per round orders every reuse.
  int round = 0;
  int32_t hi = end;
  while (hi > 0) {
    const int32_t lo = max(0, hi - kRound);
    int* added = &sh.round_added[round % 3];
    if (tid == 0) sh.round_added[(round + 1) % 3] = 0;
    float4 v[kQuadsPerThread] = {};
#pragma unroll
    for (int j = 0; j < kQuadsPerThread; ++j) {
      const int32_t c = lo + 4 * (j * kThreads + tid);
      if (c < hi) v[j] = LoadQuad(row, c, aligned);
    }
    // The thread's 16 keys stay in registers; a bit mask marks the ones at or above the floor.
    uint32_t keys[4 * kQuadsPerThread];
    uint32_t take = 0;
#pragma unroll
    for (int j = 0; j < kQuadsPerThread; ++j) {
      const int32_t c = lo + 4 * (j * kThreads + tid);
      const float s[4] = {v[j].x, v[j].y, v[j].z, v[j].w};
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        keys[4 * j + e] = ScoreKey(s[e]);
        if (c < hi && Compose(keys[4 * j + e], ~static_cast<uint32_t>(c + e)) >= floor) take |= 1u << (4 * j + e);
      }
    }
    if (__any_sync(0xffffffffu, take != 0)) {
      int slot = count + ReserveSlots(__popc(take), added);
#pragma unroll
      for (int x = 0; x < 4 * kQuadsPerThread; ++x) {
        if (take & (1u << x)) {
          if (slot < capacity) {
            buffer.keys[slot] = keys[x];
            buffer.ncols[slot] = ~static_cast<uint32_t>(lo + 4 * ((x / 4) * kThreads + tid) + x % 4);
          }
          ++slot;
        }
      }
    }
    __syncthreads();
    const int n = *added;
    if (count + n > capacity) {
      // Overflow: forget this round's appends, cut (the floor rises) and read the round again; a
      // whole round fits beside k keys, so the retry cannot overflow.
      floor = Cut(buffer, count, k, false, selection, sh);
      count = k;
    } else {
      count += n;
      hi = lo;
    }
    ++round;
  }
  return count;
}

// Writes the k selected keys' columns best first into out_row, then -1 up to out_cols. The buffer
// (capacity ≥ k + kBins) is free and receives the bucket-grouped keys and the bucket cursors.
__device__ void WriteOrdered(Candidates selection, int k, Candidates buffer, int capacity, int32_t* out_row,
                             int32_t out_cols, TopKShared& sh) {
  const int tid = threadIdx.x;
  unsigned long long lo = ~0ull, hi = 0;
  for (int i = tid; i < k; i += kThreads) {
    const unsigned long long key = Compose(selection.keys[i], selection.ncols[i]);
    lo = min(lo, key);
    hi = max(hi, key);
  }
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    lo = min(lo, __shfl_xor_sync(0xffffffffu, lo, offset));
    hi = max(hi, __shfl_xor_sync(0xffffffffu, hi, offset));
  }
  if (tid % kWarpSize == 0) {
    atomicMin(&sh.key_min, lo);
    atomicMax(&sh.key_max, hi);
  }
  for (int b = tid; b < kBins; b += kThreads) sh.hist[b] = 0;
  __syncthreads();
  const uint64_t key_min = sh.key_min, span = sh.key_max - key_min;
  // Bucket 0 holds the best keys: the key's offset above the minimum, scaled onto the buckets
  // (offset · scale / 2⁶⁴, scale ≈ 2⁷⁵ / (span + 1)), reversed. Any scale keeps buckets in key order.
  const uint64_t scale =
      span < kBins ? 0 : static_cast<uint64_t>(ldexp(1.0, 75) / (static_cast<double>(span) + 1.0) * (1.0 - 1e-12));
  auto bucket_of = [&](uint64_t key) {
    const uint64_t offset = key - key_min;
    return kBins - 1 - static_cast<int>(span < kBins ? offset : min(__umul64hi(offset, scale), static_cast<unsigned long long>(kBins - 1)));
  };
  for (int i = tid; i < k; i += kThreads) atomicAdd(&sh.hist[bucket_of(Compose(selection.keys[i], selection.ncols[i]))], 1);
  __syncthreads();
  int* cursor = reinterpret_cast<int*>(buffer.keys + capacity - kBins);
  int items[kBinsPerThread], start[kBinsPerThread];
  for (int j = 0; j < kBinsPerThread; ++j) items[j] = sh.hist[tid * kBinsPerThread + j];
  cub::BlockScan<int, kThreads>(sh.scan).ExclusiveSum(items, start);
  for (int j = 0; j < kBinsPerThread; ++j) cursor[tid * kBinsPerThread + j] = start[j];
  __syncthreads();
  for (int i = tid; i < k; i += kThreads) {
    const int slot = atomicAdd(&cursor[bucket_of(Compose(selection.keys[i], selection.ncols[i]))], 1);
    buffer.keys[slot] = selection.keys[i];
    buffer.ncols[slot] = selection.ncols[i];
  }
  __syncthreads();
  // cursor[b] is now the end of bucket b. Each key's rank: its bucket's start + better keys in it.
  auto* ranked = reinterpret_cast<int32_t*>(selection.ncols);  // the selection is consumed
  for (int i = tid; i < k; i += kThreads) {
    const uint64_t key = Compose(buffer.keys[i], buffer.ncols[i]);
    const int b = bucket_of(key);
    const int bucket_end = cursor[b];
    int rank = bucket_end - sh.hist[b];
    for (int j = bucket_end - sh.hist[b]; j < bucket_end; ++j) rank += Compose(buffer.keys[j], buffer.ncols[j]) > key;
    ranked[rank] = static_cast<int32_t>(~buffer.ncols[i]);
  }
  __syncthreads();
  for (int i = tid; i < out_cols; i += kThreads) out_row[i] = i < k ? ranked[i] : -1;
}

__global__ void __launch_bounds__(kThreads, 2)
    RowTopKKernel(const float* __restrict__ logits, int64_t logits_stride, int32_t logits_cols,
                  const int32_t* __restrict__ token_pos, int32_t* __restrict__ out, int64_t out_stride, int32_t out_cols) {
  extern __shared__ __align__(16) uint32_t dynamic[];
  __shared__ TopKShared sh;
  const int tid = threadIdx.x;
  const int64_t r = blockIdx.x;
  const float* row = logits + r * logits_stride;
  int32_t* out_row = out + r * out_stride;
  // Columns past the logits' width are not there to read: the row is cut to its width.
  const int32_t length = max(0, min(token_pos[r], logits_cols - 1) + 1);
  const int32_t k = min(out_cols, length);
  if (k == 0) {
    for (int i = tid; i < out_cols; i += kThreads) out_row[i] = -1;
    return;
  }
  const int capacity = CapacityFor(out_cols);
  const Candidates buffer{dynamic, dynamic + capacity};
  const Candidates selection{dynamic + 2 * capacity, dynamic + 2 * capacity + out_cols};
  const bool aligned = (reinterpret_cast<uintptr_t>(row) & 15) == 0;
  if (tid == 0) {
    sh.round_added[0] = sh.round_added[1] = sh.round_added[2] = 0;
    sh.key_min = ~0ull;
    sh.key_max = 0;
  }
  for (int b = tid; b < kBins; b += kThreads) sh.hist[b] = 0;
  __syncthreads();

  // The last columns, up to the capacity, go into the buffer as they are (their first digit counted
  // on the way, for the first radix pass); `start` is a multiple of 4 so the rest of the row splits
  // into whole quads.
  const int32_t start = length > capacity ? (length - capacity + 3) & ~3 : 0;
  int count = length - start;
  const int32_t quads = count / 4;
  for (int32_t q0 = 0; q0 < quads; q0 += kThreads * kQuadsPerThread) {
    float4 v[kQuadsPerThread] = {};
#pragma unroll
    for (int j = 0; j < kQuadsPerThread; ++j) {
      const int32_t q = q0 + j * kThreads + tid;
      if (q < quads) v[j] = LoadQuad(row, start + 4 * q, aligned);
    }
#pragma unroll
    for (int j = 0; j < kQuadsPerThread; ++j) {
      const int32_t q = q0 + j * kThreads + tid;
      const uint4 keys = make_uint4(ScoreKey(v[j].x), ScoreKey(v[j].y), ScoreKey(v[j].z), ScoreKey(v[j].w));
      if (q < quads) {
        const uint32_t c = static_cast<uint32_t>(start + 4 * q);
        reinterpret_cast<uint4*>(buffer.keys)[q] = keys;
        reinterpret_cast<uint4*>(buffer.ncols)[q] = make_uint4(~c, ~(c + 1), ~(c + 2), ~(c + 3));
      }
      CountFirstDigit(keys.x, q < quads, sh.hist);
      CountFirstDigit(keys.y, q < quads, sh.hist);
      CountFirstDigit(keys.z, q < quads, sh.hist);
      CountFirstDigit(keys.w, q < quads, sh.hist);
    }
  }
  for (int32_t i = 4 * quads + tid; i < count; i += kThreads) {
    const uint32_t key = ScoreKey(__ldg(row + start + i));
    buffer.keys[i] = key;
    buffer.ncols[i] = ~static_cast<uint32_t>(start + i);
    atomicAdd(&sh.hist[key >> 21], 1);
  }
  __syncthreads();

  if (start > 0) count = FilterRounds(row, aligned, start, buffer, count, k, capacity, selection, sh);
  if (count > k) {
    if (tid == 0) sh.gathered = 0;
    Gather(buffer, count, SelectFloor(buffer, count, k, start == 0, sh), selection, sh);
  } else {
    for (int i = tid; i < k; i += kThreads) {
      selection.keys[i] = buffer.keys[i];
      selection.ncols[i] = buffer.ncols[i];
    }
  }
  __syncthreads();
  WriteOrdered(selection, k, buffer, capacity, out_row, out_cols, sh);
}

// Raises the kernel's dynamic shared-memory limit (and asks for the largest shared-memory carveout,
// so two blocks fit on an SM) once per device.
bool ConfigureOnce() {
  static std::atomic<uint64_t> configured{0};
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device >= 64) return false;
  const uint64_t bit = uint64_t{1} << device;
  if (configured.load(std::memory_order_acquire) & bit) return true;
  if (cudaFuncSetAttribute(RowTopKKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(SharedBytesFor(kMaxK))) != cudaSuccess ||
      cudaFuncSetAttribute(RowTopKKernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                           cudaSharedmemCarveoutMaxShared) != cudaSuccess) {
    return false;
  }
  configured.fetch_or(bit, std::memory_order_acq_rel);
  return true;
}

}  // namespace

std::string RowTopK(Tensor logits, const int32_t* token_pos, Tensor out, cudaStream_t stream) {
  if (logits.dtype != DType::kF32 || out.dtype != DType::kI32 || out.rows != logits.rows) {
    return "top-k: logits " + logits.DebugString() + " and output " + out.DebugString() + " disagree";
  }
  if (out.cols > kMaxK) return "top-k: k = " + std::to_string(out.cols) + " exceeds " + std::to_string(kMaxK);
  if (logits.cols > INT32_MAX) return "top-k: rows of " + std::to_string(logits.cols) + " columns are too long";
  if (out.rows == 0 || out.cols == 0) return {};
  if (!ConfigureOnce()) return "top-k: " + LaunchError() + " (setting the kernel's shared-memory limit)";
  const int32_t k = static_cast<int32_t>(out.cols);
  RowTopKKernel<<<static_cast<unsigned>(out.rows), kThreads, SharedBytesFor(k), stream>>>(
      logits.ptr<float>(), logits.stride, static_cast<int32_t>(logits.cols), token_pos, out.ptr<int32_t>(), out.stride,
      k);
  return LaunchError();
}

}  // namespace indexcache::cuda
