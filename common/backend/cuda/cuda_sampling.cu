// Backend::SampleTokens on the GPU: the sampling pipeline of common/sampling/sampler.h (temperature →
// top-k → top-p → min-p → inverse CDF) run where the logits are, with the uniform the host's Sampler
// drew. One block of 512 threads per row; the row stays in global memory (620 KB at vocab 154,880,
// more than shared memory holds) and is re-read from L2 by each pass.
//
// Every filter of the pipeline keeps a PREFIX of one canonical order of the usable tokens (logit
// descending, then id ascending): top-k the first k, top-p the shortest prefix reaching the mass,
// min-p those whose weight is >= min_p (weights fall along the order, and equal logits have equal
// weights, so min-p never splits a tie). A prefix is a Cut — (key, id): every token with a larger
// order key, and those with this key up to this id — found by radix select over the float's order
// bits (four 8-bit digits, most significant first, per-digit counts AND masses so the same descent
// answers "the k-th token" and "where the running mass reaches m"), then, only inside the one group
// of equal logits where the cut falls, over the ids.
//
// The draw follows the host's order exactly: with top_p < 1 the host walks its nucleus in canonical
// order, so the token is the element where the canonical running mass first exceeds u·kept (the
// same descent); with top_p = 1 it walks in id order, so each thread sums a contiguous id chunk, a
// block scan gives the chunk offsets and one thread walks its chunk.
//
// Arithmetic: each weight is expf(float((double(logit) - max) · (1 / double(temperature)))), the
// host's expression (the double steps round identically; CUDA's expf is within 2 ulp of glibc's).
// Sums and the running masses are in f64, as on the host: f32 sums over 155K weights would drift by
// ~1e-4 relative, moving top-p cuts and draws far more often than the expf ulps do; f64 keeps the
// only differences at the boundaries themselves, and the adds are a negligible part of a pass.
//
// Launch configuration depends only on the shape (one block per row); no host synchronization,
// allocation or attribute setting, so it records into the decode graph. Passes over the row per
// sampled row: 1 (max) + 5 (top-k, when on) + 1 (total) + 5 (top-p, when on) + 1 (kept mass) + 5 or 2
// (draw). A top-k of at most kMaxGathered (1024) is gathered into shared memory after its 5 passes (+1
// to gather), and every later pass walks those survivors instead of the row.
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include <climits>

#include "common/backend/cuda/cuda_common.cuh"
#include "common/backend/cuda/cuda_kernels.h"
#include "common/sampling/sampling_draw.h"

namespace indexcache::cuda {
namespace {

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;
constexpr int kBins = 256;  // 8-bit digits
constexpr int kBinsPerLane = kBins / 32;
// A top-k up to this size is gathered into shared memory, and later passes walk it, not the row.
constexpr int kMaxGathered = 1024;

// Maps a float to an unsigned key ordered like the float (-0 folded onto +0, as == has it).
__device__ __forceinline__ uint32_t OrderKey(float x) {
  uint32_t u = __float_as_uint(x);
  if (x == 0.0f) u = 0;
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ float FromOrderKey(uint32_t key) {
  return __uint_as_float((key & 0x80000000u) ? (key & 0x7fffffffu) : ~key);
}

// NaN compares false, so this also rejects NaN (sampler.cc's Usable).
__device__ __forceinline__ bool Usable(float x) { return x > -INFINITY; }

// A prefix of the canonical order: tokens with key > `key`, and those with key == `key` and id <= `id`.
struct Cut {
  uint32_t key;
  int32_t id;
};
// Every usable token: their keys exceed OrderKey(-inf).
constexpr Cut kEverything{0u, INT_MAX};

__device__ __forceinline__ bool Within(uint32_t key, int32_t id, Cut cut) {
  return key > cut.key || (key == cut.key && id <= cut.id);
}

// The tokens a pass walks: the whole row (ids = nullptr: position j is token j), or the survivors of
// a small top-k gathered into shared memory in id order (ids[j] is position j's token).
struct Row {
  const float* x;
  int32_t vocab;  // positions
  float max_logit;
  double inv_temperature;
  const int32_t* ids = nullptr;
  __device__ int32_t Id(int32_t j) const { return ids == nullptr ? j : ids[j]; }
  // sampler.cc's weight: the max has weight exactly 1; with a +inf max the +inf tokens share it.
  __device__ double Weight(float logit) const {
    if (isinf(max_logit)) return logit == max_logit ? 1.0 : 0.0;
    const double scaled = (static_cast<double>(logit) - max_logit) * inv_temperature;
    return static_cast<double>(expf(static_cast<float>(scaled)));
  }
};

// The tokens a pass looks at: usable, inside `cut`, weight >= `floor` (0: no floor; min_p: min-p).
struct Members {
  Cut cut;
  float floor;
};

// Calls fn(x, id) for every token of the row, x = -inf past its end. Every thread makes the same number
// of calls (AddToBins needs whole warps) and sees its ids rising (pass 1 relies on it). A 16-byte
// aligned row is read as float4, kUnroll loads in flight per thread: one block streams a 620 KB row
// per pass, and scalar loads, one in flight per thread, left it latency-bound.
constexpr int kUnroll = 4;
template <typename Fn>
__device__ __forceinline__ void ForEachToken(const Row& row, Fn&& fn) {
  if (row.ids != nullptr || reinterpret_cast<uintptr_t>(row.x) % 16 != 0) {
    for (int32_t base = 0; base < row.vocab; base += kThreads) {
      const int32_t j = base + static_cast<int32_t>(threadIdx.x);
      fn(j < row.vocab ? row.x[j] : -INFINITY, j < row.vocab ? row.Id(j) : j);
    }
    return;
  }
  for (int32_t base = 0; base < row.vocab; base += kThreads * 4 * kUnroll) {
    float4 v[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int32_t j = base + (u * kThreads + static_cast<int32_t>(threadIdx.x)) * 4;
      if (j + 3 < row.vocab) {
        v[u] = *reinterpret_cast<const float4*>(row.x + j);
      } else {
        v[u].x = j < row.vocab ? row.x[j] : -INFINITY;
        v[u].y = j + 1 < row.vocab ? row.x[j + 1] : -INFINITY;
        v[u].z = j + 2 < row.vocab ? row.x[j + 2] : -INFINITY;
        v[u].w = -INFINITY;
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int32_t j = base + (u * kThreads + static_cast<int32_t>(threadIdx.x)) * 4;
      fn(v[u].x, j);
      fn(v[u].y, j + 1);
      fn(v[u].z, j + 2);
      fn(v[u].w, j + 3);
    }
  }
}

struct Shared {
  uint32_t count[kBins];
  double mass[kBins];
  double chunk_end[kThreads];  // the id-order draw's inclusive chunk masses
  // A top-k of at most kMaxGathered: its survivors, gathered (any order), then in id order.
  float gathered_logit[kMaxGathered];
  int32_t gathered_id[kMaxGathered];
  float survivor_logit[kMaxGathered];
  int32_t survivor_id[kMaxGathered];
  int32_t gathered;
  // The warp's choice of bin, broadcast: bin, or -1 when the running total never reached the target.
  int chosen_bin;
  uint32_t chosen_count;
  double before;  // running total before the chosen bin
  int32_t pick;  // the thread whose id chunk holds the draw
  int32_t warp_max[kWarps];
  union {
    cub::BlockReduce<double, kThreads>::TempStorage sum;
    cub::BlockScan<double, kThreads>::TempStorage scan;
  } cub;
  struct {
    float value[kWarps];
    int32_t id[kWarps];
    int32_t usable[kWarps];
  } argmax;
};

__device__ double BlockSum(double v, Shared& sh) {
  __syncthreads();  // the temp storage may still be in use by the previous reduction
  const double total = cub::BlockReduce<double, kThreads>(sh.cub.sum).Sum(v);
  __shared__ double result;
  if (threadIdx.x == 0) result = total;
  __syncthreads();
  return result;
}

__device__ int32_t BlockMax(int32_t v, Shared& sh) {
  for (int offset = 16; offset > 0; offset >>= 1) v = max(v, __shfl_xor_sync(0xffffffffu, v, offset));
  __syncthreads();  // sh.warp_max may still be read by the previous call
  if (threadIdx.x % 32 == 0) sh.warp_max[threadIdx.x / 32] = v;
  __syncthreads();
  int32_t m = sh.warp_max[0];
  for (int w = 1; w < kWarps; ++w) m = max(m, sh.warp_max[w]);
  return m;
}

// Adds this lane's token (bin >= 0; -1: not a member) to the histograms. Called by all 32 lanes
// together: lanes of a warp mostly fall in one bin, and one shared address taking 32 atomics (the
// f64 add is a compare-and-swap loop) serializes them, so each distinct bin gets one atomic per warp.
__device__ void AddToBins(int bin, double weight, bool by_mass, Shared& sh) {
  const unsigned peers = __match_any_sync(0xffffffffu, bin);
  const int lane = threadIdx.x % 32;
  const bool leader = lane == __ffs(peers) - 1;
  if (!by_mass) {
    if (bin >= 0 && leader) atomicAdd(&sh.count[bin], static_cast<uint32_t>(__popc(peers)));
    return;
  }
  for (unsigned pending = __ballot_sync(0xffffffffu, leader && bin >= 0); pending != 0; pending &= pending - 1) {
    const int group_leader = __ffs(pending) - 1;
    const unsigned group = __shfl_sync(0xffffffffu, peers, group_leader);
    double v = (group >> lane) & 1u ? weight : 0.0;
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    if (lane == group_leader) {
      atomicAdd(&sh.count[bin], static_cast<uint32_t>(__popc(group)));
      atomicAdd(&sh.mass[bin], v);
    }
  }
}

// Whether a running total has reached the target: mass >= target (top-p, counts), or > (the draw:
// the host returns the first token with u < cumulative).
__device__ __forceinline__ bool Reached(double total, double target, bool strict) {
  return strict ? total > target : total >= target;
}

// Warp 0 walks the 256 bins in `descending` or ascending order and finds the first bin at which the
// running total (masses, or counts) reaches `target`. Lane l owns 8 consecutive bins of the walk;
// a warp scan gives each lane its starting total. When no bin reaches the target: with `clamp` (a
// later digit, inside a bin an earlier pass chose, whose sub-bins summed in another order fell just
// short) the last non-empty bin; otherwise none. Writes sh.chosen_bin (-1: none), sh.chosen_count,
// sh.before (the running total before the chosen bin).
__device__ void ChooseBin(bool by_mass, bool descending, double target, bool strict, bool clamp, Shared& sh) {
  if (threadIdx.x < 32) {
    const int lane = threadIdx.x;
    auto bin_at = [&](int step) { return descending ? kBins - 1 - step : step; };
    auto value = [&](int bin) { return by_mass ? sh.mass[bin] : static_cast<double>(sh.count[bin]); };
    double mine = 0.0;
    for (int i = 0; i < kBinsPerLane; ++i) mine += value(bin_at(lane * kBinsPerLane + i));
    double inclusive = mine;
    for (int offset = 1; offset < 32; offset <<= 1) {
      const double other = __shfl_up_sync(0xffffffffu, inclusive, offset);
      if (lane >= offset) inclusive += other;
    }
    const unsigned reached = __ballot_sync(0xffffffffu, Reached(inclusive, target, strict));
    const unsigned non_empty = __ballot_sync(0xffffffffu, mine > 0.0);
    int chooser = -1;
    if (reached != 0) chooser = __ffs(reached) - 1;
    else if (clamp && non_empty != 0) chooser = 31 - __clz(non_empty);
    if (lane == 0) sh.chosen_bin = -1;
    __syncwarp();
    if (lane == chooser) {
      double running = inclusive - mine;
      int chosen = -1;
      double before = running;
      for (int i = 0; i < kBinsPerLane; ++i) {
        const int bin = bin_at(lane * kBinsPerLane + i);
        const double v = value(bin);
        if (v > 0.0) {  // short of the target here too (rounding, or clamping): the lane's last non-empty bin
          chosen = bin;
          before = running;
        }
        running += v;
        if (v > 0.0 && Reached(running, target, strict)) break;
      }
      sh.chosen_bin = chosen;
      sh.chosen_count = chosen >= 0 ? sh.count[chosen] : 0;
      sh.before = before;
    }
  }
  __syncthreads();
}

__device__ void ClearBins(Shared& sh) {
  for (int b = threadIdx.x; b < kBins; b += kThreads) {
    sh.count[b] = 0;
    sh.mass[b] = 0.0;
  }
  __syncthreads();
}

// The n-th member (1-based, in id order) among the members whose key is `key`: radix select over
// the id's digits (ids < 2^24).
__device__ int32_t NthIdWithKey(const Row& row, Members m, uint32_t key, uint32_t n, Shared& sh) {
  uint32_t prefix = 0, mask = 0;
  for (int shift = 16; shift >= 0; shift -= 8) {
    ClearBins(sh);
    ForEachToken(row, [&](float x, int32_t j) {
      const bool member = Usable(x) && OrderKey(x) == key && Within(key, j, m.cut) &&
                          (static_cast<uint32_t>(j) & mask) == prefix;
      AddToBins(member ? (j >> shift) & 0xff : -1, 0.0, /*by_mass=*/false, sh);
    });
    __syncthreads();
    ChooseBin(/*by_mass=*/false, /*descending=*/false, static_cast<double>(n), /*strict=*/false, /*clamp=*/true, sh);
    n -= static_cast<uint32_t>(sh.before);
    prefix |= static_cast<uint32_t>(sh.chosen_bin) << shift;
    mask |= 0xffu << shift;
  }
  return static_cast<int32_t>(prefix);
}

// The largest id among the members whose key is `key`.
__device__ int32_t LastIdWithKey(const Row& row, Members m, uint32_t key, Shared& sh) {
  int32_t last = -1;
  ForEachToken(row, [&](float x, int32_t j) {
    if (Usable(x) && OrderKey(x) == key && Within(key, j, m.cut)) last = j;
  });
  return BlockMax(last, sh);
}

// Where, walking the members in canonical order, the running total — the member count when
// !by_mass, their weights when by_mass — first reaches `target` (> target when `strict`). Returns the
// prefix ending at that member (its id is the cut's id); `found` is false when the total over all
// members never reaches the target (rounding, on the host a walk that runs off the end).
__device__ Cut Descend(const Row& row, Members m, bool by_mass, double target, bool strict, bool& found,
                       Shared& sh) {
  uint32_t prefix = 0, mask = 0;
  uint32_t group_count = 0;
  for (int shift = 24; shift >= 0; shift -= 8) {
    ClearBins(sh);
    ForEachToken(row, [&](float x, int32_t j) {
      const uint32_t key = OrderKey(x);
      bool member = Usable(x) && (key & mask) == prefix && Within(key, j, m.cut);
      double w = 0.0;
      if (member && (by_mass || m.floor > 0.0f)) {
        w = row.Weight(x);
        member = w >= m.floor;
      }
      AddToBins(member ? static_cast<int>((key >> shift) & 0xff) : -1, w, by_mass, sh);
    });
    __syncthreads();
    ChooseBin(by_mass, /*descending=*/true, target, strict, /*clamp=*/shift < 24, sh);
    if (sh.chosen_bin < 0) {
      found = false;
      return m.cut;
    }
    target -= sh.before;
    prefix |= static_cast<uint32_t>(sh.chosen_bin) << shift;
    mask |= 0xffu << shift;
    group_count = sh.chosen_count;
    __syncthreads();  // everyone has read sh before the next pass clears it
  }
  found = true;
  // The cut falls inside the group of members with key `prefix`, all of one weight w: it takes the
  // first `needed` of them in id order.
  uint32_t needed;
  if (by_mass) {
    const double w = row.Weight(FromOrderKey(prefix));
    // The smallest j with j·w reaching the remaining target (a multiplication where the host adds
    // j times: they differ only at the boundary).
    double j = w > 0.0 ? ceil(target / w) : 1.0;
    j = fmin(fmax(j, 1.0), static_cast<double>(group_count));
    while (j > 1.0 && Reached((j - 1.0) * w, target, strict)) j -= 1.0;
    while (j < group_count && !Reached(j * w, target, strict)) j += 1.0;
    needed = static_cast<uint32_t>(j);
  } else {
    needed = static_cast<uint32_t>(target);
  }
  const int32_t id = needed >= group_count ? LastIdWithKey(row, m, prefix, sh) : NthIdWithKey(row, m, prefix, needed, sh);
  return Cut{prefix, id};
}

// The member the host's inverse CDF falls back on when rounding puts u at the very top: the last
// one of positive weight in canonical order (descending = true) or in id order.
__device__ int32_t LastPositive(const Row& row, Members m, bool canonical, Shared& sh) {
  // Canonical order: the smallest key of positive weight, then its largest id.
  uint32_t smallest = UINT_MAX;
  int32_t last_id = -1;
  ForEachToken(row, [&](float x, int32_t j) {
    if (!Usable(x) || !Within(OrderKey(x), j, m.cut)) return;
    const double w = row.Weight(x);
    if (w < m.floor || w <= 0.0) return;
    last_id = j;
    smallest = min(smallest, OrderKey(x));
  });
  if (!canonical) return BlockMax(last_id, sh);
  // Keys are < 2^32 but BlockMax takes int32: the complement of the smallest key, as an ordered int.
  const int32_t best = BlockMax(static_cast<int32_t>(~smallest ^ 0x80000000u), sh);
  const uint32_t key = ~(static_cast<uint32_t>(best) ^ 0x80000000u);
  return LastIdWithKey(row, m, key, sh);
}

// The id-order inverse CDF: the first member (id order) whose running weight exceeds `u_mass`.
__device__ int32_t DrawInIdOrder(const Row& row, Members m, double u_mass, Shared& sh) {
  // Chunks of a multiple of 4 tokens, so an aligned row's chunk sums read float4s.
  const int32_t chunk = ((row.vocab + kThreads - 1) / kThreads + 3) / 4 * 4;
  const int32_t begin = min(row.vocab, static_cast<int32_t>(threadIdx.x) * chunk);
  const int32_t end = min(row.vocab, begin + chunk);
  auto weight_of = [&](int32_t j) {
    const float x = row.x[j];
    if (!Usable(x) || !Within(OrderKey(x), row.Id(j), m.cut)) return 0.0;
    const double w = row.Weight(x);
    return w < m.floor ? 0.0 : w;
  };
  double mine = 0.0;
  if (row.ids == nullptr && reinterpret_cast<uintptr_t>(row.x) % 16 == 0) {
    auto weight_at = [&](float x, int32_t j) {
      if (!Usable(x) || !Within(OrderKey(x), j, m.cut)) return 0.0;
      const double w = row.Weight(x);
      return w < m.floor ? 0.0 : w;
    };
    int32_t j = begin;
#pragma unroll 4
    for (; j + 3 < end; j += 4) {  // in id order, as the walk below adds
      const float4 v = *reinterpret_cast<const float4*>(row.x + j);
      mine += weight_at(v.x, j);
      mine += weight_at(v.y, j + 1);
      mine += weight_at(v.z, j + 2);
      mine += weight_at(v.w, j + 3);
    }
    for (; j < end; ++j) mine += weight_of(j);
  } else {
    for (int32_t j = begin; j < end; ++j) mine += weight_of(j);
  }
  __syncthreads();
  double inclusive;
  cub::BlockScan<double, kThreads>(sh.cub.scan).InclusiveSum(mine, inclusive);
  sh.chunk_end[threadIdx.x] = inclusive;
  if (threadIdx.x == 0) sh.pick = INT_MAX;
  __syncthreads();
  if (mine > 0.0 && u_mass < inclusive) atomicMin(&sh.pick, static_cast<int>(threadIdx.x));
  __syncthreads();
  const int32_t owner = sh.pick;
  if (owner == INT_MAX) return LastPositive(row, m, /*canonical=*/false, sh);
  __shared__ int32_t token;
  if (static_cast<int32_t>(threadIdx.x) == owner) {
    double running = owner > 0 ? sh.chunk_end[owner - 1] : 0.0;
    int32_t last = -1;
    token = -1;
    for (int32_t j = begin; j < end; ++j) {
      const double w = weight_of(j);
      if (w <= 0.0) continue;
      running += w;
      last = row.Id(j);
      if (u_mass < running) {
        token = last;
        break;
      }
    }
    if (token < 0) token = last;  // the chunk's own sum rounded past u where this walk does not
  }
  __syncthreads();
  return token;
}

// The top-k survivors (exactly `k` <= kMaxGathered members of `kept`) gathered into shared memory in
// id order: each lands at its rank among their ids (k² / kThreads comparisons, a few microseconds).
__device__ Row GatherSurvivors(const Row& row, Cut kept, int32_t k, Shared& sh) {
  if (threadIdx.x == 0) sh.gathered = 0;
  __syncthreads();
  const int lane = threadIdx.x % 32;
  ForEachToken(row, [&](float x, int32_t j) {
    const bool member = Usable(x) && Within(OrderKey(x), j, kept);
    const unsigned members = __ballot_sync(0xffffffffu, member);
    int32_t base = 0;
    if (lane == 0 && members != 0) base = atomicAdd(&sh.gathered, __popc(members));
    base = __shfl_sync(0xffffffffu, base, 0);
    const int32_t slot = base + __popc(members & ((1u << lane) - 1u));
    if (member && slot < kMaxGathered) {  // exactly k <= kMaxGathered are members: the test only guards memory
      sh.gathered_logit[slot] = x;
      sh.gathered_id[slot] = j;
    }
  });
  __syncthreads();
  for (int32_t i = threadIdx.x; i < k; i += kThreads) {
    const int32_t id = sh.gathered_id[i];
    int32_t rank = 0;
    for (int32_t other = 0; other < k; ++other) rank += sh.gathered_id[other] < id ? 1 : 0;
    sh.survivor_logit[rank] = sh.gathered_logit[i];
    sh.survivor_id[rank] = id;
  }
  __syncthreads();
  Row survivors = row;
  survivors.x = sh.survivor_logit;
  survivors.vocab = k;
  survivors.ids = sh.survivor_id;
  return survivors;
}

__global__ void __launch_bounds__(kThreads, 1) SampleTokensKernel(const float* logits, int64_t stride, int32_t vocab,
                                                               const int32_t* draws, int64_t draws_stride,
                                                               int32_t* out, int64_t out_stride) {
  __shared__ Shared sh;
  const float* x = logits + blockIdx.x * stride;
  const int32_t* words = draws + blockIdx.x * draws_stride;
  const float temperature = __int_as_float(words[0]);
  const int32_t top_k = words[1];
  const float top_p = __int_as_float(words[2]);
  const float min_p = __int_as_float(words[3]);
  const uint64_t uniform_bits =
      static_cast<uint64_t>(static_cast<uint32_t>(words[4])) | (static_cast<uint64_t>(static_cast<uint32_t>(words[5])) << 32);

  // Pass 1: the max (lowest id on ties: greedy's answer) and the number of usable tokens.
  float best = -INFINITY;
  int32_t at = -1, usable = 0;
  const Row scan{x, vocab, 0.0f, 0.0};
  ForEachToken(scan, [&](float v, int32_t j) {
    if (!Usable(v)) return;
    ++usable;
    if (v > best) {  // ids rise along a thread's scan: strict keeps its lowest
      best = v;
      at = j;
    }
  });
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int offset = 16; offset > 0; offset >>= 1) {
    const float v = __shfl_down_sync(0xffffffffu, best, offset);
    const int32_t id = __shfl_down_sync(0xffffffffu, at, offset);
    usable += __shfl_down_sync(0xffffffffu, usable, offset);
    if (id >= 0 && (at < 0 || v > best || (v == best && id < at))) {
      best = v;
      at = id;
    }
  }
  if (lane == 0) {
    sh.argmax.value[warp] = best;
    sh.argmax.id[warp] = at;
    sh.argmax.usable[warp] = usable;
  }
  __syncthreads();
  __shared__ float max_logit;
  __shared__ int32_t argmax, num_usable;
  if (threadIdx.x == 0) {
    best = -INFINITY;
    at = -1;
    usable = 0;
    for (int w = 0; w < kWarps; ++w) {
      const int32_t id = sh.argmax.id[w];
      usable += sh.argmax.usable[w];
      if (id >= 0 && (at < 0 || sh.argmax.value[w] > best || (sh.argmax.value[w] == best && id < at))) {
        best = sh.argmax.value[w];
        at = id;
      }
    }
    max_logit = best;
    argmax = at;
    num_usable = usable;
  }
  __syncthreads();
  int32_t* result = out + blockIdx.x * out_stride;
  if (num_usable == 0 || temperature == 0.0f) {  // refused (-1), or greedy
    if (threadIdx.x == 0) *result = argmax;
    return;
  }
  Row row{x, vocab, max_logit, 1.0 / static_cast<double>(temperature)};

  // top-k: the first k of the canonical order.
  bool found = true;
  Cut kept = kEverything;
  if (top_k > 0 && top_k < num_usable) {
    kept = Descend(row, Members{kEverything, 0.0f}, /*by_mass=*/false, top_k, /*strict=*/false, found, sh);
    if (top_k <= kMaxGathered) row = GatherSurvivors(row, kept, top_k, sh);
  }
  // top-p: the shortest prefix whose mass reaches top_p of the top-k mass.
  if (top_p < 1.0f) {
    double total = 0.0;
    ForEachToken(row, [&](float v, int32_t j) {
      if (Usable(v) && Within(OrderKey(v), j, kept)) total += row.Weight(v);
    });
    total = BlockSum(total, sh);
    kept = Descend(row, Members{kept, 0.0f}, /*by_mass=*/true, static_cast<double>(top_p) * total, /*strict=*/false,
                   found, sh);
  }
  // min-p: weight >= min_p (p_i < min_p · p_max <=> weight_i < min_p: the max has weight 1).
  const Members members{kept, min_p};
  double kept_mass = 0.0;
  ForEachToken(row, [&](float v, int32_t j) {
    if (!Usable(v) || !Within(OrderKey(v), j, kept)) return;
    const double w = row.Weight(v);
    if (w >= min_p) kept_mass += w;
  });
  kept_mass = BlockSum(kept_mass, sh);
  const double u_mass = static_cast<double>(uniform_bits) * 0x1.0p-53 * kept_mass;

  int32_t token;
  if (top_p < 1.0f) {  // the host walks its nucleus in canonical order
    const Cut at_draw = Descend(row, members, /*by_mass=*/true, u_mass, /*strict=*/true, found, sh);
    token = found ? at_draw.id : LastPositive(row, members, /*canonical=*/true, sh);
  } else {  // the host walks the top-k survivors in id order
    token = DrawInIdOrder(row, members, u_mass, sh);
  }
  if (threadIdx.x == 0) *result = token;
}

std::string SamplingShapeError(const Tensor& x, const Tensor& draws, const Tensor& out) {
  return "sample tokens: shapes disagree (" + x.DebugString() + ", " + draws.DebugString() + ", " + out.DebugString() +
         ")";
}

}  // namespace

std::string SampleTokens(Tensor x, Tensor draws, Tensor out, cudaStream_t stream) {
  if (x.dtype != DType::kF32 || draws.dtype != DType::kI32 || draws.cols != kSamplingDrawWords || !IsColumn(out) ||
      draws.rows != x.rows || out.rows != x.rows || x.cols >= (int64_t{1} << 24)) {
    return SamplingShapeError(x, draws, out);
  }
  if (x.rows == 0) return {};
  SampleTokensKernel<<<static_cast<unsigned>(x.rows), kThreads, 0, stream>>>(
      x.ptr<float>(), x.stride, static_cast<int32_t>(x.cols), draws.ptr<int32_t>(), draws.stride,
      out.ptr<int32_t>(), out.stride);
  return LaunchError();
}

}  // namespace indexcache::cuda
