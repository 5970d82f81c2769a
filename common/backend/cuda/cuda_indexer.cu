// The lightning indexer's scores on Hopper's warpgroup tensor cores (wgmma, sm_90a).
//
// Orientation (as DeepGEMM's mqa_logits): keys are the M side of the product and (token, head) pairs
// the N side, so that one key tile is multiplied against 256 query rows at once and the sum over
// heads is a sum over accumulator columns, which a thread holds in registers except for a reduction
// over the 4 lanes of a quad. A block owns 2·T tokens (T = 256 / padded heads) and three warpgroups:
//   - a producer that gathers 64-key tiles from the paged pool into a ring of kStages shared-memory
//     stages (mbarrier full/empty), 128-byte swizzled. A bf16 pool is copied as it is: each 16-byte
//     chunk goes straight to its swizzled place (cp.async), three tiles in flight. An f32 pool is
//     loaded into registers and rounded to bf16 on the way, with the next tile's loads in flight
//     while it stores one;
//   - two consumers, each owning T tokens: per tile one 64 × 256 × D product (D / 16 wgmma
//     m64n256k16, A = keys, B = its queries, both from shared memory), then ReLU, the head weights
//     and the head sum in registers, and the logits stored straight from registers.
// Both consumers read the same key tile, so each key byte loaded serves 512 query rows. The queries
// (bf16; f32 ones rounded) stay in shared memory for the block's life. The scale is folded into the
// head weights (ReLU(s·x) = |s|·ReLU(sign(s)·x); a negative scale flips the queries' signs, which is
// exact), so bf16 queries are stored as they arrive. Tiles past a consumer's last causal position are
// skipped; the key range is split over grid.y when query blocks are few (decode), and a block whose
// tokens span several sequences (batched decode) makes one pass per sequence.
#include <algorithm>
#include <type_traits>

#include "common/backend/cuda/cuda_common.cuh"
#include "common/backend/cuda/cuda_kernels.h"

namespace indexcache::cuda {
namespace {

constexpr int kKeyTile = 64;     // keys per stage: the M of one wgmma
constexpr int kCols = 256;       // (token, head) columns per consumer: the N of one wgmma
constexpr int kConsumers = 2;    // consumer warpgroups sharing each key tile
constexpr int kStages = 4;       // key tiles in flight
constexpr int kThreads = 128 * (1 + kConsumers);
constexpr int kAtomBytes = 128;  // one swizzle row: 64 bf16 of K
constexpr int kMaxHeads = 128;   // padded heads ≤ 128 keeps T ≥ 2 (the quad reduction below needs it)
// The key range is split over about this many blocks when query blocks are few (1 block per SM: its
// shared memory), each split at least kMinTilesPerSplit tiles so the block's prologue (its queries)
// stays small beside its key loop.
constexpr int kSms = 132;
constexpr int kMinTilesPerSplit = 4;
// Register split between roles (setmaxnreg): the block starts with 65536 / 384 → 168 per thread; the
// producer holds two tiles of loads (2 × D / 2 registers), a consumer 128 accumulators plus the
// epilogue (up to 32 token sums with 8 heads).
template <int kDimP>
struct RegisterSplit {
  static constexpr int kProducer = kDimP == 128 ? 160 : 88;
  static constexpr int kConsumer = kDimP == 128 ? 168 : 208;
  static_assert(128 * kProducer + 128 * kConsumers * kConsumer <= kThreads * 168);
};

struct IndexerArgs {
  const void* q;  // F32 or BF16 (q_bf16)
  int64_t q_stride;
  const void* w;  // F32 or BF16 (w_bf16)
  int64_t w_stride;
  const void* keys;  // the kernel's KeyT
  int64_t key_stride;
  PagedRows rows;
  int32_t n, heads, dim, tiles_per_split;
  bool q_bf16, w_bf16;
  float scale;
  float* logits;
  int64_t logits_stride;
};

// Shared memory of one block, offsets from a 1024-byte aligned base (the 128-byte swizzle repeats
// every 8 rows = 1024 bytes, and wgmma computes it from the absolute address).
template <int kDimP>
struct Smem {
  static constexpr int kAtoms = kDimP / 64;
  static constexpr int kQBytes = kAtoms * kCols * kAtomBytes;         // one consumer's [256 × D] bf16
  static constexpr int kStageBytes = kAtoms * kKeyTile * kAtomBytes;  // one [64 × D] bf16 key tile
  static constexpr int kQ = 0;
  static constexpr int kKeys = kQ + kConsumers * kQBytes;
  static constexpr int kWeights = kKeys + kStages * kStageBytes;  // f32 [consumer][256]
  static constexpr int kTokSeq = kWeights + kConsumers * kCols * 4;
  static constexpr int kTokPos = kTokSeq + kConsumers * kCols * 4;  // 2·T ≤ 512 tokens (8 heads)
  static constexpr int kPasses = kTokPos + kConsumers * kCols * 4;  // [0] = count, then sequences
  static constexpr int kBarriers = kPasses + (kConsumers * kCols + 1) * 4 + 4;  // 8-byte aligned
  static constexpr int kBytes = kBarriers + 2 * kStages * 8;
  static constexpr int kAlloc = kBytes + 1024;  // room to align the base
  static_assert(kBarriers % 8 == 0);
};

// Byte offset of the 16-byte chunk `chunk` (8 bf16 of K) of row `row` in a K-major operand of
// `rows` rows, laid out as 64-element K atoms with the 128-byte swizzle (chunk index ^= row % 8).
__device__ __forceinline__ uint32_t SwizzledOffset(int row, int chunk, int rows) {
  return (chunk >> 3) * rows * kAtomBytes + row * kAtomBytes + (((chunk & 7) ^ (row & 7)) << 4);
}

// wgmma shared-memory descriptor: start address, leading offset 16 B (unused with this swizzle),
// stride 1024 B between 8-row groups, 128-byte swizzle.
__device__ __forceinline__ uint64_t Descriptor(uint32_t address) {
  return uint64_t{(address & 0x3FFFF) >> 4} | (uint64_t{1} << 16) | (uint64_t{1024 >> 4} << 32) | (uint64_t{1} << 62);
}

__device__ __forceinline__ void BarrierInit(uint32_t bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count) : "memory");
}

__device__ __forceinline__ void BarrierArrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(bar) : "memory");
}

__device__ __forceinline__ void BarrierWait(uint32_t bar, uint32_t parity) {
  uint32_t done = 0;
  do {
    asm volatile(
        "{ .reg .pred p; mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }"
        : "=r"(done)
        : "r"(bar), "r"(parity)
        : "memory");
  } while (!done);
}

// Named barriers 1 and 2 (0 is __syncthreads) pass the turn to issue wgmma between the two consumers.
__device__ __forceinline__ void NamedSync(int id) {
  asm volatile("bar.sync %0, %1;" ::"r"(id), "n"(128 * kConsumers) : "memory");
}
__device__ __forceinline__ void NamedArrive(int id) {
  asm volatile("bar.arrive %0, %1;" ::"r"(id), "n"(128 * kConsumers) : "memory");
}

// Keeps the compiler from moving accumulator reads or writes across the asynchronous wgmma window.
__device__ __forceinline__ void FenceAccumulators(float (&d)[128]) {
#pragma unroll
  for (int i = 0; i < 128; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

#define IC_ACC8(c, i)                                                                                      \
  c(d[i]), c(d[i + 1]), c(d[i + 2]), c(d[i + 3]), c(d[i + 4]), c(d[i + 5]), c(d[i + 6]), c(d[i + 7])
#define IC_ACC128(c)                                                                                          \
  IC_ACC8(c, 0), IC_ACC8(c, 8), IC_ACC8(c, 16), IC_ACC8(c, 24), IC_ACC8(c, 32), IC_ACC8(c, 40), IC_ACC8(c, 48), \
      IC_ACC8(c, 56), IC_ACC8(c, 64), IC_ACC8(c, 72), IC_ACC8(c, 80), IC_ACC8(c, 88), IC_ACC8(c, 96),          \
      IC_ACC8(c, 104), IC_ACC8(c, 112), IC_ACC8(c, 120)
#define IC_WGMMA_64X256X16(scale_d)                                                                    \
  "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 "                                            \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "                           \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "                  \
  "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "                  \
  "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "                  \
  "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "                  \
  "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, "                  \
  "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, "      \
  "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}, " \
  "%128, %129, " scale_d ", 1, 1, 0, 0;"

// d (+)= A · Bᵀ for A [64 × 16] and B [256 × 16], bf16 K-major in shared memory, f32 accumulators in
// the wgmma layout: d[4j + e] is row lane/4 + 8·(e / 2) of this warp's 16, column 8j + 2·(lane % 4) + e % 2.
// The first step of a product writes d without reading it ("=f"), so the previous tile's
// accumulators are dead during its epilogue and need no registers beside the partial sums.
template <bool kAccumulate>
__device__ __forceinline__ void Wgmma64x256x16(float (&d)[128], uint64_t a, uint64_t b) {
  if constexpr (kAccumulate) {
    asm volatile("{ .reg .pred p; setp.eq.b32 p, 1, 1;\n" IC_WGMMA_64X256X16("p") " }"
                 : IC_ACC128("+f")
                 : "l"(a), "l"(b));
  } else {
    asm volatile("{ .reg .pred p; setp.eq.b32 p, 1, 0;\n" IC_WGMMA_64X256X16("p") " }"
                 : IC_ACC128("=f")
                 : "l"(a), "l"(b));
  }
}
#undef IC_WGMMA_64X256X16
#undef IC_ACC128
#undef IC_ACC8

__device__ __forceinline__ uint32_t PackBf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

__device__ __forceinline__ void StoreShared16(uint32_t address, float4 lo, float4 hi) {
  asm volatile("st.shared.v4.b32 [%0], {%1, %2, %3, %4};" ::"r"(address), "r"(PackBf16(lo.x, lo.y)),
               "r"(PackBf16(lo.z, lo.w)), "r"(PackBf16(hi.x, hi.y)), "r"(PackBf16(hi.z, hi.w))
               : "memory");
}

// The last key position any token of `seq` in [first, first + count) needs, or -1.
__device__ __forceinline__ int LastPosition(const int32_t* tok_seq, const int32_t* tok_pos, int first, int count,
                                            int seq) {
  int last = -1;
  for (int i = first; i < first + count; ++i) {
    if (tok_seq[i] == seq) last = max(last, tok_pos[i]);
  }
  return last;
}

__host__ __device__ constexpr int KeyChunksPerThread(int dim_p) { return kKeyTile * dim_p / 8 / 128; }

// One producer thread's share of a key tile: 16-byte bf16 chunks e = tid + 128·b of the tile, each
// loaded as 8 floats (zeros past `last` or the key dim).
template <int kDimP>
__device__ __forceinline__ void LoadKeyChunks(const IndexerArgs& a, const int32_t* table, int tile, int last,
                                              float4 (&v)[KeyChunksPerThread(kDimP)][2]) {
  constexpr int kChunksPerRow = kDimP / 8;
  const int tid = threadIdx.x % 128;
#pragma unroll
  for (int b = 0; b < KeyChunksPerThread(kDimP); ++b) {
    const int e = tid + 128 * b, row = e / kChunksPerRow, d0 = (e % kChunksPerRow) * 8;
    const int s = tile * kKeyTile + row;
    v[b][0] = v[b][1] = make_float4(0.f, 0.f, 0.f, 0.f);
    if (s <= last && d0 < a.dim) {
      const int64_t slot = int64_t{table[s / a.rows.block_size]} * a.rows.block_size + s % a.rows.block_size;
      const float4* src = reinterpret_cast<const float4*>(static_cast<const float*>(a.keys) + slot * a.key_stride + d0);
      v[b][0] = src[0];
      v[b][1] = src[1];
    }
  }
}

// Waits until the consumers released the stage of ring position `it`, stores the chunks as bf16
// and marks the stage full.
template <int kDimP>
__device__ __forceinline__ void StoreKeyChunks(uint32_t keys_smem, uint32_t bars, int it,
                                               const float4 (&v)[KeyChunksPerThread(kDimP)][2]) {
  constexpr int kChunksPerRow = kDimP / 8;
  const int tid = threadIdx.x % 128, stage = it % kStages;
  BarrierWait(bars + 8 * (kStages + stage), ((it / kStages) & 1) ^ 1);
  const uint32_t base = keys_smem + stage * Smem<kDimP>::kStageBytes;
#pragma unroll
  for (int b = 0; b < KeyChunksPerThread(kDimP); ++b) {
    const int e = tid + 128 * b;
    StoreShared16(base + SwizzledOffset(e / kChunksPerRow, e % kChunksPerRow, kKeyTile), v[b][0], v[b][1]);
  }
  // The consumers read this stage through the async proxy (wgmma).
  asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
  BarrierArrive(bars + 8 * stage);
}

// Producer of an f32 pool: gathers key tiles [tile_begin, tile_end) of `seq` (positions past `last`
// as zeros) into the stage ring, continuing the ring position `it`. Two register buffers alternate so
// that one tile's loads are in flight while the other is stored: with one, every tile paid the full
// load latency and the kernel ran at 336 TFLOP/s at 128K instead of 420 (H100, 2026-11-22).
template <int kDimP>
__device__ void ProduceF32Keys(const IndexerArgs& a, uint32_t keys_smem, uint32_t bars, int seq, int last,
                               int tile_begin, int tile_end, int& it) {
  if (tile_begin >= tile_end) return;
  const int32_t* table = a.rows.block_tables + int64_t{seq} * a.rows.tables_stride;
  float4 even[KeyChunksPerThread(kDimP)][2], odd[KeyChunksPerThread(kDimP)][2];
  LoadKeyChunks<kDimP>(a, table, tile_begin, last, even);
  for (int tile = tile_begin; tile < tile_end; tile += 2) {
    const bool has_odd = tile + 1 < tile_end;
    if (has_odd) LoadKeyChunks<kDimP>(a, table, tile + 1, last, odd);
    StoreKeyChunks<kDimP>(keys_smem, bars, it++, even);
    if (!has_odd) break;
    if (tile + 2 < tile_end) LoadKeyChunks<kDimP>(a, table, tile + 2, last, even);
    StoreKeyChunks<kDimP>(keys_smem, bars, it++, odd);
  }
}

// Producer of a bf16 pool: the same tiles, each 16-byte chunk copied by cp.async straight into its
// swizzled place (zero-filled past `last` or the key dim), so nothing passes through registers.
// wgmma reads the stages through the async proxy, so a stage is marked full only after its copies
// landed and this thread fenced them (fence.proxy.async, writer side as the PTX memory model asks):
// after issuing tile t the thread waits for tile t − kLag's copies, fences and arrives. kLag =
// kStages − 2: the consumers then work on tile t − kLag − 1 while the producer issues tile t, so
// they never wait for a fresh issue's table reads (with kLag = kStages − 1 they did: 381 TFLOP/s
// at 128K against 417 for the f32 pool, H100, 2026-11-22), and kLag + 1 tiles stay in flight.
template <int kDimP>
__device__ void ProduceBf16Keys(const IndexerArgs& a, uint32_t keys_smem, uint32_t bars, int seq, int last,
                                int tile_begin, int tile_end, int& it) {
  constexpr int kChunksPerRow = kDimP / 8;
  if (tile_begin >= tile_end) return;
  const int32_t* table = a.rows.block_tables + int64_t{seq} * a.rows.tables_stride;
  const auto* keys = static_cast<const __nv_bfloat16*>(a.keys);
  constexpr int kLag = kStages - 2;
  const int tid = threadIdx.x % 128, first_it = it;
  for (int tile = tile_begin; tile < tile_end; ++tile, ++it) {
    const int stage = it % kStages;
    BarrierWait(bars + 8 * (kStages + stage), ((it / kStages) & 1) ^ 1);
    const uint32_t base = keys_smem + stage * Smem<kDimP>::kStageBytes;
#pragma unroll
    for (int b = 0; b < KeyChunksPerThread(kDimP); ++b) {
      const int e = tid + 128 * b, row = e / kChunksPerRow, chunk = e % kChunksPerRow, d0 = chunk * 8;
      const int s = tile * kKeyTile + row;
      const bool present = s <= last && d0 < a.dim;
      const __nv_bfloat16* src = keys;  // not read when absent (zero-filled), but a valid address
      if (present) {
        const int64_t slot = int64_t{table[s / a.rows.block_size]} * a.rows.block_size + s % a.rows.block_size;
        src += slot * a.key_stride + d0;
      }
      asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(base + SwizzledOffset(row, chunk, kKeyTile)),
                   "l"(src), "r"(present ? 16 : 0)
                   : "memory");
    }
    asm volatile("cp.async.commit_group;" ::: "memory");
    if (it - first_it >= kLag) {
      asm volatile("cp.async.wait_group %0;" ::"n"(kLag) : "memory");
      asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
      BarrierArrive(bars + 8 * ((it - kLag) % kStages));
    }
  }
  // The tiles still in flight, oldest first.
  asm volatile("cp.async.wait_group 0;" ::: "memory");
  asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
  for (int done = max(first_it, it - kLag); done < it; ++done) BarrierArrive(bars + 8 * (done % kStages));
}

// Consumer `c`: per key tile its 64 × 256 product, then for each of its T tokens the head-weighted
// ReLU sum, stored to logits for keys up to the token's position.
template <int kHeadsP, int kDimP>
__device__ void ConsumeKeys(const IndexerArgs& a, const unsigned char* smem, uint32_t smem_base, int c, int t0,
                            int seq, int tile_begin, int tile_end, int& it) {
  using S = Smem<kDimP>;
  constexpr int kT = kCols / kHeadsP;  // tokens of this consumer
  constexpr int kJPerToken = kHeadsP / 8;
  const int tid = threadIdx.x % 128, warp = tid / 32, lane = tid % 32;
  const auto* tok_seq = reinterpret_cast<const int32_t*>(smem + S::kTokSeq);
  const auto* tok_pos = reinterpret_cast<const int32_t*>(smem + S::kTokPos);
  const auto* weights = reinterpret_cast<const float*>(smem + S::kWeights) + c * kCols;
  const uint32_t bars = smem_base + S::kBarriers;
  const int my_last = LastPosition(tok_seq, tok_pos, c * kT, kT, seq);
  // After the quad reduction this lane holds tokens hi1·T/2 + i of key row `row`.
  const int hi1 = lane & 1, hi2 = (lane >> 1) & 1;
  const int row = warp * 16 + lane / 4 + 8 * hi2;
  const uint32_t q_smem = smem_base + S::kQ + c * S::kQBytes;
  float d[128];
  for (int tile = tile_begin; tile < tile_end; ++tile, ++it) {
    const int stage = it % kStages, key0 = tile * kKeyTile;
    BarrierWait(bars + 8 * stage, (it / kStages) & 1);
    const bool active = key0 <= my_last;
    // Ping-pong: the consumers issue their products in turn, so the tensor cores run one consumer's
    // product while the other works through its epilogue (issued together, both would finish
    // together and leave the tensor cores idle during both epilogues; measured 3% faster at 128K).
    NamedSync(1 + c);
    if (active) {
      const uint32_t k_smem = smem_base + S::kKeys + stage * S::kStageBytes;
      asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
      Wgmma64x256x16<false>(d, Descriptor(k_smem), Descriptor(q_smem));
#pragma unroll
      for (int k = 1; k < kDimP / 16; ++k) {
        const uint32_t atom = (k / 4) * kAtomBytes, step = (k % 4) * 32;
        Wgmma64x256x16<true>(d, Descriptor(k_smem + atom * kKeyTile + step), Descriptor(q_smem + atom * kCols + step));
      }
      asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
      NamedArrive(1 + (c ^ 1));
      asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory");
      FenceAccumulators(d);
    } else {
      NamedArrive(1 + (c ^ 1));
    }
    __syncwarp();
    if (lane == 0) BarrierArrive(bars + 8 * (kStages + stage));  // the stage may be refilled
    if (!active) continue;
    // Per token: Σ over this thread's heads of w·ReLU(q·k) for rows r (s0) and r + 8 (s1), then the
    // sum over the quad's 4 lanes by halving exchanges: the first (lanes ^ 2) keeps row half hi2, the
    // second (lanes ^ 1) token half hi1, leaving this lane's full sums in v[0 .. T/2).
    float v[kT];
#pragma unroll
    for (int tok = 0; tok < kT; ++tok) {
      float s0 = 0.f, s1 = 0.f;
#pragma unroll
      for (int jj = 0; jj < kJPerToken; ++jj) {
        const int j = tok * kJPerToken + jj;
        const float2 w = *reinterpret_cast<const float2*>(weights + 8 * j + 2 * (lane % 4));
        s0 += w.x * fmaxf(d[4 * j], 0.f) + w.y * fmaxf(d[4 * j + 1], 0.f);
        s1 += w.x * fmaxf(d[4 * j + 2], 0.f) + w.y * fmaxf(d[4 * j + 3], 0.f);
      }
      v[tok] = (hi2 ? s1 : s0) + __shfl_xor_sync(0xffffffffu, hi2 ? s0 : s1, 2);
    }
#pragma unroll
    for (int i = 0; i < kT / 2; ++i) {
      const float send = hi1 ? v[i] : v[kT / 2 + i], keep = hi1 ? v[kT / 2 + i] : v[i];
      v[i] = keep + __shfl_xor_sync(0xffffffffu, send, 1);
    }
    const int key = key0 + row;
#pragma unroll
    for (int i = 0; i < kT / 2; ++i) {
      const int tok = c * kT + hi1 * (kT / 2) + i;
      if (tok_seq[tok] == seq && key <= tok_pos[tok]) a.logits[int64_t{t0 + tok} * a.logits_stride + key] = v[i];
    }
  }
}

template <int kHeadsP, int kDimP, typename KeyT>
__global__ void __launch_bounds__(kThreads, 1) IndexerLogitsKernel(IndexerArgs a) {
  using S = Smem<kDimP>;
  constexpr int kT = kCols / kHeadsP, kTokens = kConsumers * kT;
  extern __shared__ unsigned char smem_raw[];
  const uint32_t raw = SharedAddress(smem_raw);
  unsigned char* smem = smem_raw + (((raw + 1023) & ~1023u) - raw);
  const uint32_t base = SharedAddress(smem);
  auto* tok_seq = reinterpret_cast<int32_t*>(smem + S::kTokSeq);
  auto* tok_pos = reinterpret_cast<int32_t*>(smem + S::kTokPos);
  auto* passes = reinterpret_cast<int32_t*>(smem + S::kPasses);
  auto* weights = reinterpret_cast<float*>(smem + S::kWeights);
  const int tid = threadIdx.x;
  // Long causal rows first: the last query blocks see the most keys.
  const int t0 = (gridDim.x - 1 - blockIdx.x) * kTokens;

  for (int i = tid; i < kTokens; i += kThreads) {
    const bool valid = t0 + i < a.n;
    tok_seq[i] = valid ? a.rows.token_seq[t0 + i] : -1;
    tok_pos[i] = valid ? a.rows.token_pos[t0 + i] : -1;
  }
  // Queries as bf16, signs flipped for a negative scale (see the head comment); column n = token·Hp +
  // head of its consumer; padded heads and dims are zero. Rows of absent tokens are left unwritten: a
  // product column depends only on its own query row, and absent tokens' columns are never stored.
  // kQBatch 16-byte chunks of bf16 (8 elements: 16 bytes of bf16 queries, 32 of f32) per thread are
  // loaded before any is stored, to keep loads in flight; a bf16 chunk travels as the bits of v[b][0].
  constexpr int kChunksPerRow = kDimP / 8, kQChunks = kTokens * kHeadsP * kChunksPerRow, kQBatch = 8;
  const bool negate = a.scale < 0.f;
  for (int e0 = tid; e0 < kQChunks; e0 += kThreads * kQBatch) {
    float4 v[kQBatch][2];
#pragma unroll
    for (int b = 0; b < kQBatch; ++b) {
      const int e = e0 + b * kThreads, chunk = e % kChunksPerRow, col = e / kChunksPerRow;
      const int tok = col / kHeadsP, h = col % kHeadsP, d0 = chunk * 8;
      v[b][0] = v[b][1] = make_float4(0.f, 0.f, 0.f, 0.f);
      if (e < kQChunks && t0 + tok < a.n && h < a.heads && d0 < a.dim) {
        const int64_t at = int64_t{t0 + tok} * a.q_stride + h * a.dim + d0;
        if (a.q_bf16) {
          v[b][0] = *reinterpret_cast<const float4*>(static_cast<const __nv_bfloat16*>(a.q) + at);
        } else {
          const float4* src = reinterpret_cast<const float4*>(static_cast<const float*>(a.q) + at);
          v[b][0] = src[0];
          v[b][1] = src[1];
        }
      }
    }
#pragma unroll
    for (int b = 0; b < kQBatch; ++b) {
      const int e = e0 + b * kThreads, chunk = e % kChunksPerRow, col = e / kChunksPerRow;
      const int tok = col / kHeadsP, h = col % kHeadsP;
      if (e >= kQChunks || t0 + tok >= a.n) continue;
      const int c = tok / kT, n = (tok % kT) * kHeadsP + h;
      const uint32_t address = base + S::kQ + c * S::kQBytes + SwizzledOffset(n, chunk, kCols);
      if (a.q_bf16) {
        const uint32_t sign = negate ? 0x80008000u : 0u;
        const uint4 bits = *reinterpret_cast<const uint4*>(&v[b][0]);
        asm volatile("st.shared.v4.b32 [%0], {%1, %2, %3, %4};" ::"r"(address), "r"(bits.x ^ sign), "r"(bits.y ^ sign),
                     "r"(bits.z ^ sign), "r"(bits.w ^ sign)
                     : "memory");
      } else {
        const float f = negate ? -1.f : 1.f;
        const float4 lo = v[b][0], hi = v[b][1];
        StoreShared16(address, make_float4(lo.x * f, lo.y * f, lo.z * f, lo.w * f),
                      make_float4(hi.x * f, hi.y * f, hi.z * f, hi.w * f));
      }
    }
  }
  const float magnitude = fabsf(a.scale);
  for (int e = tid; e < kTokens * kHeadsP; e += kThreads) {
    const int tok = e / kHeadsP, h = e % kHeadsP;
    const int64_t at = int64_t{t0 + tok} * a.w_stride + h;
    const float w = !(t0 + tok < a.n && h < a.heads) ? 0.f
                    : a.w_bf16                       ? __bfloat162float(static_cast<const __nv_bfloat16*>(a.w)[at])
                                                     : static_cast<const float*>(a.w)[at];
    weights[e] = w * magnitude;
  }
  const uint32_t bars = base + S::kBarriers;
  if (tid == 0) {
    for (int s = 0; s < kStages; ++s) {
      BarrierInit(bars + 8 * s, 128);                      // full: every producer thread stored
      BarrierInit(bars + 8 * (kStages + s), kConsumers * 4);  // empty: every consumer warp is done
    }
  }
  __syncthreads();
  // The distinct sequences of the block's tokens in order of first appearance: one pass each.
  if (tid == 0) {
    int count = 0;
    for (int i = 0; i < kTokens; ++i) {
      bool seen = tok_seq[i] < 0;
      for (int j = 0; j < count && !seen; ++j) seen = passes[1 + j] == tok_seq[i];
      if (!seen) passes[1 + count++] = tok_seq[i];
    }
    passes[0] = count;
  }
  asm volatile("fence.proxy.async.shared::cta;" ::: "memory");  // the queries are read by wgmma
  __syncthreads();

  // Each role is one branch, the pass loop inside it, so that setmaxnreg applies to it.
  const int wg = tid / 128;
  int it = 0;  // position in the stage ring, advanced identically by every role
  if (wg == 0) {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" ::"n"(RegisterSplit<kDimP>::kProducer));
    for (int p = 0; p < passes[0]; ++p) {
      const int seq = passes[1 + p];
      const int last = LastPosition(tok_seq, tok_pos, 0, kTokens, seq);
      const int tile_begin = blockIdx.y * a.tiles_per_split;
      const int tile_end = min(last / kKeyTile + 1, tile_begin + a.tiles_per_split);
      if constexpr (std::is_same_v<KeyT, __nv_bfloat16>) {
        ProduceBf16Keys<kDimP>(a, base + S::kKeys, bars, seq, last, tile_begin, tile_end, it);
      } else {
        ProduceF32Keys<kDimP>(a, base + S::kKeys, bars, seq, last, tile_begin, tile_end, it);
      }
    }
  } else {
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" ::"n"(RegisterSplit<kDimP>::kConsumer));
    const int c = wg - 1;
    if (c == 1) NamedArrive(1);  // consumer 0 issues first
    for (int p = 0; p < passes[0]; ++p) {
      const int seq = passes[1 + p];
      const int last = LastPosition(tok_seq, tok_pos, 0, kTokens, seq);
      const int tile_begin = blockIdx.y * a.tiles_per_split;
      const int tile_end = min(last / kKeyTile + 1, tile_begin + a.tiles_per_split);
      ConsumeKeys<kHeadsP, kDimP>(a, smem, base, c, t0, seq, tile_begin, tile_end, it);
    }
    if (c == 0) NamedSync(1);  // takes consumer 1's last hand-over, leaving the barrier clean
  }
}

template <int kHeadsP, int kDimP, typename KeyT>
std::string Launch(const IndexerArgs& a, int32_t max_context, cudaStream_t stream) {
  constexpr int kTokens = kConsumers * kCols / kHeadsP;
  const int query_blocks = static_cast<int>(CeilDiv(a.n, kTokens));
  const int tiles = static_cast<int>(CeilDiv(max_context, kKeyTile));
  // About one wave of blocks: split the key range when the query blocks are fewer than the SMs (decode,
  // short chunks); more splits would only repeat the prologue, as one block fills an SM.
  const int splits = std::clamp((kSms + query_blocks / 2) / query_blocks, 1, tiles);
  IndexerArgs args = a;
  args.tiles_per_split = static_cast<int32_t>(std::max<int64_t>(CeilDiv(tiles, splits), kMinTilesPerSplit));
  const int grid_y = static_cast<int>(CeilDiv(tiles, args.tiles_per_split));
  constexpr int kShared = Smem<kDimP>::kAlloc;
  static const cudaError_t attribute = cudaFuncSetAttribute(IndexerLogitsKernel<kHeadsP, kDimP, KeyT>,
                                                            cudaFuncAttributeMaxDynamicSharedMemorySize, kShared);
  if (attribute != cudaSuccess) return std::string("indexer: ") + cudaGetErrorString(attribute);
  IndexerLogitsKernel<kHeadsP, kDimP, KeyT><<<dim3(query_blocks, grid_y), kThreads, kShared, stream>>>(args);
  return LaunchError();
}

template <int kDimP, typename KeyT>
std::string LaunchForHeads(const IndexerArgs& a, int32_t max_context, cudaStream_t stream) {
  // Heads padded to a power of two ≥ 8 (zero weights and queries), so tokens tile the 256 columns.
  if (a.heads <= 8) return Launch<8, kDimP, KeyT>(a, max_context, stream);
  if (a.heads <= 16) return Launch<16, kDimP, KeyT>(a, max_context, stream);
  if (a.heads <= 32) return Launch<32, kDimP, KeyT>(a, max_context, stream);
  if (a.heads <= 64) return Launch<64, kDimP, KeyT>(a, max_context, stream);
  return Launch<kMaxHeads, kDimP, KeyT>(a, max_context, stream);
}

// 16-byte loads of queries and keys: aligned data, row strides a whole number of 16 bytes.
bool Rows16(const Tensor& t) {
  return reinterpret_cast<uintptr_t>(t.data) % 16 == 0 && t.stride * static_cast<int64_t>(DTypeSize(t.dtype)) % 16 == 0;
}

}  // namespace

std::string IndexerLogits(Tensor q, Tensor head_weights, int32_t heads, Tensor key_pool, const PagedRows& rows,
                          int32_t max_context, float scale, Tensor logits, cudaStream_t stream) {
  const int64_t dim = key_pool.cols;
  if (!IsFloat(q) || !IsFloat(head_weights) || !IsFloat(key_pool) || logits.dtype != DType::kF32) {
    return "indexer: query, weights and keys must be f32 or bf16, logits f32";
  }
  if (heads <= 0 || heads > kMaxHeads || q.cols != int64_t{heads} * dim || head_weights.cols < heads ||
      head_weights.rows != q.rows || logits.rows != q.rows || logits.cols < max_context) {
    return "indexer: " + std::to_string(heads) + " heads of " + q.DebugString() + " over keys " +
           key_pool.DebugString() + " (at most 128 heads)";
  }
  if (dim % 16 != 0 || dim > 128) {
    return "indexer: key dim " + std::to_string(dim) + " must be a multiple of 16, at most 128";
  }
  if (!Rows16(key_pool) || !Rows16(q)) {
    return "indexer: queries " + q.DebugString() + " and keys " + key_pool.DebugString() +
           " must be 16-byte aligned with row strides a multiple of 16 bytes";
  }
  if (q.rows == 0 || max_context <= 0) return {};
  IndexerArgs a{};
  a.q = q.data;
  a.q_stride = q.stride;
  a.q_bf16 = q.dtype == DType::kBF16;
  a.w = head_weights.data;
  a.w_stride = head_weights.stride;
  a.w_bf16 = head_weights.dtype == DType::kBF16;
  a.keys = key_pool.data;
  a.key_stride = key_pool.stride;
  a.rows = rows;
  a.n = static_cast<int32_t>(q.rows);
  a.heads = heads;
  a.dim = static_cast<int32_t>(dim);
  a.scale = scale;
  a.logits = logits.ptr<float>();
  a.logits_stride = logits.stride;
  return DispatchFloat(key_pool.dtype, [&](auto key) {
    using KeyT = decltype(key);
    return dim <= 64 ? LaunchForHeads<64, KeyT>(a, max_context, stream)
                     : LaunchForHeads<128, KeyT>(a, max_context, stream);
  });
}

}  // namespace indexcache::cuda
