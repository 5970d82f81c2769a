// Sparse MLA attention in the absorbed (latent) form, FlashAttention-style over the selected keys.
//
// A block owns one token and ALL its heads (up to 64; the heads are the M dimension of the matrix
// products, padded to 16, 32 or 64 rows), so every selected key row is gathered from the paged pool
// exactly once per token. The block walks its range of the token's selected keys in tiles of 32:
//   S = Q · Kᵀ  [M × 32]       (Q = [q_latent | q_rope] rows as bf16 in shared memory)
//   online softmax over S (running max and sum per head, exp2 domain)
//   O += P · C  [M × latent]   (C = the latent part of the same key rows; O in registers)
// on tensor cores (mma.sync m16n8k16, bf16 inputs, f32 accumulation, fragments via ldmatrix).
//
// A bf16 pool's rows are copied as they are: at the start of a tile every warp issues cp.async copies
// of its rows of the NEXT tile straight into the other half of a double-buffered tile (16 bytes per
// lane, coalesced runs; missing keys zero-filled), and waits for them only at the tile's end, so the
// copies are in flight behind the tensor-core work without passing through registers.
// An f32 pool's rows cannot be copied as they are: each warp loads its rows of the NEXT tile into
// registers (two phases of two rows, 16 bytes per lane, coalesced 512-byte runs) while the current
// tile is multiplied, and rounds them to bf16 into the other half of a double-buffered tile after
// each phase. The loads of a whole tile are thus in flight behind the tensor-core work instead
// of in front of it. Two tiles ahead, the rows are prefetched into L2 (cp.async.bulk.prefetch, no
// registers), so the register loads mostly hit L2 and the DRAM latency hides behind two tiles of work.
// (A flat element → row/column mapping costs an integer division per 16 bytes; it tripled the
// instructions per tile, and the kernel is issue-latency bound at 2 warps per scheduler: ncu, H100.)
//
// Warp roles in one tile (8 warps): for S, warp w computes one 16-head row tile against a slice of the
// 32 keys; partial row maxima and sums meet in shared memory. For P · C, warp w owns a column slice of
// the output for every head (P is read from shared memory), so its accumulators stay in registers from
// the first tile to the last and each key row is read from shared memory once per column slice.
//
// Decode (few tokens): the token's key range is split over grid.z so that the whole GPU streams keys;
// a second kernel merges the partial softmax results.
//
// Queries and the output may each be f32 or bf16 (read once in the prologue, written once at the
// end: a run-time flag); the pool's type is a template parameter, as it shapes the key loop.
#include <algorithm>
#include <cmath>
#include <type_traits>

#include "common/backend/cuda/cuda_common.cuh"
#include "common/backend/cuda/cuda_kernels.h"

namespace indexcache::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kKeys = 32;             // keys per tile
constexpr int kPad = 8;               // bf16 row padding: row strides of 16·odd bytes keep ldmatrix conflict-free
constexpr int kLdP = kKeys + kPad;    // row stride of the probability tile
constexpr int kMaxRope = 64;          // bounds the loads per key row (below) at compile time
constexpr int kRowsPerPhase = kKeys / kWarps / 2;  // key rows each warp loads per phase (two phases a tile)
constexpr int kMaxKeysPerBlock = 2048;  // slot table in shared memory; longer rows are split
constexpr float kLog2e = 1.4426950408889634f;

struct MlaArgs {
  const void* q_latent;  // F32 or BF16 (ql_bf16)
  int64_t ql_stride;
  const void* q_rope;  // F32 or BF16 (qr_bf16)
  int64_t qr_stride;
  const void* pool;  // the kernel's PoolT
  int64_t pool_stride;
  const int32_t* indices;
  int64_t idx_stride;
  int32_t topk_cols;
  PagedRows rows;
  int32_t heads, rope, keys_per_split, splits;
  bool ql_bf16, qr_bf16;
  bool q_vec4;       // groups of 4 query elements aligned to their size: one load each
  float scale_log2;  // softmax scale × log2(e): scores live in the exp2 domain
  void* out;         // final output (splits == 1), F32 or BF16 (out_bf16)
  bool out_bf16;
  int64_t out_stride;
  float* part_o;   // [n, heads, splits, latent], unnormalised
  float* part_ml;  // [n, heads, splits, 2]: running max (exp2 domain) and sum
};

__device__ __forceinline__ void LdMatrixX4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(SharedAddress(p))
               : "memory");
}

__device__ __forceinline__ void LdMatrixX2(uint32_t (&r)[2], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(SharedAddress(p))
               : "memory");
}

__device__ __forceinline__ void LdMatrixX4Trans(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(SharedAddress(p))
               : "memory");
}

__device__ __forceinline__ void LdMatrixX2Trans(uint32_t (&r)[2], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(SharedAddress(p))
               : "memory");
}

// Asks the memory system to bring `bytes` (a multiple of 16) at `p` into L2; no registers, no wait.
__device__ __forceinline__ void PrefetchL2(const void* p, uint32_t bytes) {
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" ::"l"(p), "r"(bytes) : "memory");
}

// The key rows of one tile (missing keys skipped) into L2, one row per thread of the first warp.
template <typename PoolT>
__device__ __forceinline__ void PrefetchTile(const MlaArgs& a, const int32_t* tile_slots, int width) {
  if (threadIdx.x < kKeys && tile_slots[threadIdx.x] >= 0) {
    PrefetchL2(static_cast<const PoolT*>(a.pool) + int64_t{tile_slots[threadIdx.x]} * a.pool_stride,
               static_cast<uint32_t>(width * sizeof(PoolT)));
  }
}

// Four consecutive query elements at `i` of an f32 or bf16 row, with one load when aligned (`vec`).
// Nothing is done with the values here, so that all of a thread's loads are in flight before the
// first is used: a bf16 quad travels as its 8 bytes in .x and .y, and StoreQuad writes it as it is.
__device__ __forceinline__ float4 LoadQuad(const void* base, int64_t i, bool bf16, bool vec) {
  if (bf16) {
    const auto* p = static_cast<const uint16_t*>(base) + i;
    const uint2 bits = vec ? *reinterpret_cast<const uint2*>(p)
                           : make_uint2(p[0] | uint32_t{p[1]} << 16, p[2] | uint32_t{p[3]} << 16);
    return make_float4(__uint_as_float(bits.x), __uint_as_float(bits.y), 0.f, 0.f);
  }
  const auto* p = static_cast<const float*>(base) + i;
  return vec ? *reinterpret_cast<const float4*>(p) : make_float4(p[0], p[1], p[2], p[3]);
}

// A LoadQuad result into the bf16 query tile (dst 8-byte aligned): bf16 bits as they are, f32 rounded.
__device__ __forceinline__ void StoreQuad(__nv_bfloat16* dst, float4 v, bool bf16) {
  if (bf16) {
    *reinterpret_cast<uint2*>(dst) = make_uint2(__float_as_uint(v.x), __float_as_uint(v.y));
  } else {
    StoreBf16x4(dst, v);
  }
}

// Two adjacent outputs at `i` (even), as f32 or rounded to bf16.
__device__ __forceinline__ void StorePair(void* base, int64_t i, bool bf16, float x, float y) {
  if (bf16) {
    *reinterpret_cast<__nv_bfloat162*>(static_cast<__nv_bfloat16*>(base) + i) = __floats2bfloat162_rn(x, y);
  } else {
    static_cast<float*>(base)[i] = x;
    static_cast<float*>(base)[i + 1] = y;
  }
}

// d[16 × 8] += a[16 × 16] · b[16 × 8], bf16 inputs, f32 accumulators.
__device__ __forceinline__ void Mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Query and key rows are zero-padded to a multiple of 32 columns: the score loop takes two 16-wide
// steps per iteration (the fragments of one step load while the other multiplies).
__host__ __device__ constexpr int PaddedWidth(int width) { return (width + 31) / 32 * 32; }

// Shared-memory layout of one block; the same arithmetic sizes the launch.
struct Layout {
  int ld;  // bf16 row stride of the query and key tiles
  size_t q, k, p, red_max, red_sum, run_max, row_sum, slots, bytes;
};

__host__ __device__ inline Layout LayoutFor(int m_rows, int width, int keys_per_split) {
  Layout l{};
  l.ld = PaddedWidth(width) + kPad;
  l.q = 0;
  l.k = l.q + sizeof(__nv_bfloat16) * m_rows * l.ld;
  l.p = l.k + sizeof(__nv_bfloat16) * 2 * kKeys * l.ld;
  l.red_max = l.p + sizeof(__nv_bfloat16) * m_rows * kLdP;
  l.red_sum = l.red_max + sizeof(float) * m_rows * 4;
  l.run_max = l.red_sum + sizeof(float) * m_rows * 4;
  l.row_sum = l.run_max + sizeof(float) * 2 * m_rows;
  l.slots = l.row_sum + sizeof(float) * m_rows;
  l.bytes = l.slots + sizeof(int32_t) * keys_per_split;
  return l;
}

// One phase's share of a key tile: warp w loads rows w + 8·(2·phase + j), j < kRowsPerPhase, each as
// kSteps steps of 32 lanes × 16 bytes (one coalesced 512-byte run per step; a missing key reads zeros) ...
template <int kSteps>
__device__ __forceinline__ void LoadRows(const MlaArgs& a, const int32_t* tile_slots, int quads, int phase,
                                         float4 (&v)[kRowsPerPhase][kSteps]) {
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
#pragma unroll
  for (int j = 0; j < kRowsPerPhase; ++j) {
    const int32_t slot = tile_slots[warp + kWarps * (phase * kRowsPerPhase + j)];
    const float4* src =
        reinterpret_cast<const float4*>(static_cast<const float*>(a.pool) + int64_t{max(slot, 0)} * a.pool_stride) + lane;
#pragma unroll
    for (int k = 0; k < kSteps; ++k) {
      v[j][k] = make_float4(0.f, 0.f, 0.f, 0.f);
      if (slot >= 0 && lane + 32 * k < quads) v[j][k] = __ldg(src + 32 * k);
    }
  }
}

// ... and stored, rounded to bf16 (one 8-byte store per 16 bytes loaded), into the key tile.
template <int kSteps>
__device__ __forceinline__ void StoreRows(__nv_bfloat16* tile, int ld, int quads, int phase,
                                          const float4 (&v)[kRowsPerPhase][kSteps]) {
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
#pragma unroll
  for (int j = 0; j < kRowsPerPhase; ++j) {
    __nv_bfloat16* dst = tile + (warp + kWarps * (phase * kRowsPerPhase + j)) * ld + lane * 4;
#pragma unroll
    for (int k = 0; k < kSteps; ++k) {
      if (lane + 32 * k < quads) {
        const __nv_bfloat162 lo = __floats2bfloat162_rn(v[j][k].x, v[j][k].y);
        const __nv_bfloat162 hi = __floats2bfloat162_rn(v[j][k].z, v[j][k].w);
        *reinterpret_cast<uint2*>(dst + 128 * k) =
            make_uint2(*reinterpret_cast<const uint32_t*>(&lo), *reinterpret_cast<const uint32_t*>(&hi));
      }
    }
  }
}

// A bf16 pool: warp w copies rows w + 8·j (all kKeys / kWarps of its rows) of a tile, each as 16-byte
// chunks lane + 32·k (kChunkSteps of them), straight into `tile`; a missing key's row is zero-filled
// (its probability is 0, and 0 · garbage could be NaN). Completes at the next cp.async.wait_all.
template <int kChunkSteps>
__device__ __forceinline__ void CopyRows(const MlaArgs& a, const int32_t* tile_slots, __nv_bfloat16* tile, int ld,
                                         int chunks) {
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
#pragma unroll
  for (int j = 0; j < kKeys / kWarps; ++j) {
    const int row = warp + kWarps * j;
    const int32_t slot = tile_slots[row];
    const auto* src = static_cast<const __nv_bfloat16*>(a.pool) + int64_t{max(slot, 0)} * a.pool_stride + lane * 8;
    const uint32_t dst = SharedAddress(tile + row * ld + lane * 8);
#pragma unroll
    for (int k = 0; k < kChunkSteps; ++k) {
      if (lane + 32 * k < chunks) {
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst + 512 * k), "l"(src + 256 * k),
                     "r"(slot >= 0 ? 16 : 0)
                     : "memory");
      }
    }
  }
}

__device__ __forceinline__ void WaitCopies() { asm volatile("cp.async.wait_all;" ::: "memory"); }

template <int kMTiles, int kLatent, typename PoolT>
__global__ void __launch_bounds__(kThreads, kMTiles == 1 ? 2 : 1) SparseMlaKernel(const MlaArgs a) {
  constexpr bool kBf16Pool = std::is_same_v<PoolT, __nv_bfloat16>;
  constexpr int kM = 16 * kMTiles;
  // Scores: kMTiles row tiles × 4 key tiles of 8, spread over the warps; kSN key tiles per warp.
  constexpr int kSN = kMTiles >= 4 ? 2 : 1;
  constexpr int kSSplits = 4 / kSN;  // warps that share one row tile (each a slice of the keys)
  constexpr int kSWarps = kMTiles * kSSplits;
  static_assert(kSWarps <= kWarps);
  // P · C: warp w owns latent columns [w·kCols, (w+1)·kCols) of every head.
  constexpr int kPvWarps = kLatent / 8 < kWarps ? kLatent / 8 : kWarps;
  constexpr int kCols = kLatent / kPvWarps;
  constexpr int kNT = kCols / 8;
  static_assert(kCols % 8 == 0 && (kNT == 1 || kNT % 2 == 0));
  constexpr int kSteps = (kLatent + kMaxRope + 127) / 128;  // 512-byte steps per f32 key row
  constexpr int kChunkSteps = (kLatent + kMaxRope + 255) / 256;  // the same per bf16 key row

  extern __shared__ __align__(128) unsigned char smem[];
  const int width = kLatent + a.rope, padded = PaddedWidth(width);
  [[maybe_unused]] const int quads = width / 4, chunks = width / 8;  // 16-byte pieces of an f32 / bf16 row
  const int key_begin = static_cast<int>(blockIdx.z) * a.keys_per_split;
  const int key_end = min(a.topk_cols, key_begin + a.keys_per_split);
  const int tiles = (key_end - key_begin + kKeys - 1) / kKeys;
  const Layout lay = LayoutFor(kM, width, tiles * kKeys);
  const int ld = lay.ld;
  auto* q_s = reinterpret_cast<__nv_bfloat16*>(smem + lay.q);        // [kM][ld]
  auto* k_s = reinterpret_cast<__nv_bfloat16*>(smem + lay.k);        // [2][kKeys][ld]
  auto* p_s = reinterpret_cast<__nv_bfloat16*>(smem + lay.p);        // [kM][kLdP]
  auto* red_max = reinterpret_cast<float*>(smem + lay.red_max);      // [kM][kSSplits]
  auto* red_sum = reinterpret_cast<float*>(smem + lay.red_sum);      // [kM][kSSplits]
  auto* run_max = reinterpret_cast<float*>(smem + lay.run_max);      // [2][kM], double-buffered by tile
  auto* row_sum = reinterpret_cast<float*>(smem + lay.row_sum);      // [kM], final sums
  auto* slots = reinterpret_cast<int32_t*>(smem + lay.slots);        // pool row of each key, -1 if none

  const int64_t r = blockIdx.x;
  const int h0 = static_cast<int>(blockIdx.y) * kM;
  const int group_heads = min(kM, a.heads - h0);
  const int tid = static_cast<int>(threadIdx.x), warp = tid / 32, lane = tid % 32;

  // Prologue, arranged so that its global reads overlap: the queries (one batch of registers: nothing
  // else is live yet), the pool rows of the block's keys (one index and one block-table read per key),
  // then both halves of the first tile.
  {
    // Queries as bf16, four columns at a time (a group never straddles latent and rope: both are
    // multiples of 4); rows past the group's heads and columns past the width are zero.
    constexpr int kQLoads = (kM * PaddedWidth(kLatent + kMaxRope) / 4 + kThreads - 1) / kThreads;
    const int row_quads = padded / 4;
    float4 qv[kQLoads];
#pragma unroll
    for (int i = 0; i < kQLoads; ++i) {
      const int e = i * kThreads + tid, h = e / row_quads, d = (e - h * row_quads) * 4;
      qv[i] = make_float4(0.f, 0.f, 0.f, 0.f);
      if (e < kM * row_quads && h < group_heads && d < width) {
        qv[i] = d < kLatent ? LoadQuad(a.q_latent, r * a.ql_stride + int64_t{h0 + h} * kLatent + d, a.ql_bf16, a.q_vec4)
                            : LoadQuad(a.q_rope, r * a.qr_stride + int64_t{h0 + h} * a.rope + (d - kLatent), a.qr_bf16,
                                       a.q_vec4);
      }
    }
    const int32_t seq = a.rows.token_seq[r];
    const int32_t* table = a.rows.block_tables + int64_t{seq} * a.rows.tables_stride;
    const int32_t* selected = a.indices + r * a.idx_stride;
    constexpr int kBatch = 8;  // keys per thread in flight
    for (int j0 = 0; j0 < tiles * kKeys; j0 += kThreads * kBatch) {
      int32_t pos[kBatch];
#pragma unroll
      for (int i = 0; i < kBatch; ++i) {
        const int key = key_begin + j0 + i * kThreads + tid;
        pos[i] = key < key_end ? selected[key] : -1;
      }
#pragma unroll
      for (int i = 0; i < kBatch; ++i) {
        const int j = j0 + i * kThreads + tid;
        if (j < tiles * kKeys) {
          slots[j] = pos[i] < 0 ? -1 : table[pos[i] / a.rows.block_size] * a.rows.block_size + pos[i] % a.rows.block_size;
        }
      }
    }
#pragma unroll
    for (int i = 0; i < kQLoads; ++i) {
      const int e = i * kThreads + tid, h = e / row_quads, d = (e - h * row_quads) * 4;
      if (e < kM * row_quads) StoreQuad(q_s + h * ld + d, qv[i], d < kLatent ? a.ql_bf16 : a.qr_bf16);
    }
    // Key columns past the width stay zero in both tiles (the loads never write them).
    for (int e = tid; e < 2 * kKeys * (padded - width); e += kThreads) {
      k_s[(e / (padded - width)) * ld + width + e % (padded - width)] = __float2bfloat16(0.0f);
    }
    if (tid < kM) run_max[tid] = -INFINITY;
  }
  __syncthreads();
  if (tiles > 1) PrefetchTile<PoolT>(a, slots + kKeys, width);
  if constexpr (kBf16Pool) {
    CopyRows<kChunkSteps>(a, slots, k_s, ld, chunks);
    WaitCopies();
  } else {
    float4 first[kRowsPerPhase][kSteps], second[kRowsPerPhase][kSteps];
    LoadRows(a, slots, quads, 0, first);
    LoadRows(a, slots, quads, 1, second);
    StoreRows(k_s, ld, quads, 0, first);
    StoreRows(k_s, ld, quads, 1, second);
  }
  __syncthreads();

  float o[kMTiles][kNT][4] = {};
  float sum = 0.0f;  // thread tid < kM: the running softmax sum of row tid
  const int s_tile = warp / kSSplits, s_split = warp % kSSplits, s_key0 = s_split * kSN * 8;
  const int g = lane / 4, c2 = (lane % 4) * 2;  // accumulator fragment: rows g, g+8; columns c2, c2+1

  for (int t = 0; t < tiles; ++t) {
    const __nv_bfloat16* k_cur = k_s + (t & 1) * kKeys * ld;
    __nv_bfloat16* k_next = k_s + ((t + 1) & 1) * kKeys * ld;
    const int32_t* tile_slots = slots + t * kKeys;
    const int32_t* next_slots = tile_slots + kKeys;
    const float* m_cur = run_max + (t & 1) * kM;
    float* m_next = run_max + ((t + 1) & 1) * kM;
    const bool more = t + 1 < tiles;
    // Tile t+2 heads for L2 while tile t+1 is loaded: the loads then mostly hit L2, and the DRAM
    // latency hides behind two tiles of work instead of one phase.
    if (t + 2 < tiles) PrefetchTile<PoolT>(a, next_slots + kKeys, width);
    // k_next was last read by the previous tile's P · C, which the barrier ending that tile closed.
    [[maybe_unused]] float4 stage[kRowsPerPhase][kBf16Pool ? 1 : kSteps];
    if constexpr (kBf16Pool) {
      if (more) CopyRows<kChunkSteps>(a, next_slots, k_next, ld, chunks);
    } else {
      if (more) LoadRows(a, next_slots, quads, 0, stage);
    }

    // S for row tile s_tile and keys s_key0 .. s_key0 + 8·kSN, scaled into the exp2 domain; missing keys -∞.
    float s[kSN][4] = {};
    if (warp < kSWarps) {
      // Two 16-wide steps per iteration: the fragments of one step load while the other multiplies;
      // with one key tile per warp, the two steps accumulate separately (two independent chains).
      const __nv_bfloat16* q_at = q_s + (s_tile * 16 + lane % 16) * ld + (lane / 16) * 8;
      const __nv_bfloat16* k_at = kSN == 2 ? k_cur + (s_key0 + (lane / 16) * 8 + lane % 8) * ld + ((lane / 8) % 2) * 8
                                           : k_cur + (s_key0 + lane % 8) * ld + ((lane / 8) % 2) * 8;
      [[maybe_unused]] float s_odd[4] = {};
      uint32_t qa[2][4], kb[2][2 * kSN];
      auto load = [&](int buf, int d0) {
        LdMatrixX4(qa[buf], q_at + d0);
        if constexpr (kSN == 2) {
          LdMatrixX4(kb[buf], k_at + d0);
        } else {
          LdMatrixX2(kb[buf], k_at + d0);
        }
      };
      load(0, 0);
      for (int d0 = 0; d0 < padded; d0 += 32) {
        load(1, d0 + 16);
        Mma(s[0], qa[0], kb[0][0], kb[0][1]);
        if constexpr (kSN == 2) Mma(s[1], qa[0], kb[0][2], kb[0][3]);
        if (d0 + 32 < padded) load(0, d0 + 32);
        if constexpr (kSN == 2) {
          Mma(s[0], qa[1], kb[1][0], kb[1][1]);
          Mma(s[1], qa[1], kb[1][2], kb[1][3]);
        } else {
          Mma(s_odd, qa[1], kb[1][0], kb[1][1]);
        }
      }
      if constexpr (kSN == 1) {
#pragma unroll
        for (int c = 0; c < 4; ++c) s[0][c] += s_odd[c];
      }
      float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
      for (int n = 0; n < kSN; ++n) {
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          const bool present = tile_slots[s_key0 + n * 8 + c2 + (c & 1)] >= 0;
          s[n][c] = present ? s[n][c] * a.scale_log2 : -INFINITY;
          mx[c / 2] = fmaxf(mx[c / 2], s[n][c]);
        }
      }
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        mx[half] = fmaxf(mx[half], __shfl_xor_sync(0xffffffffu, mx[half], 1));
        mx[half] = fmaxf(mx[half], __shfl_xor_sync(0xffffffffu, mx[half], 2));
        if (lane % 4 == 0) red_max[(s_tile * 16 + g + half * 8) * kSSplits + s_split] = mx[half];
      }
    }
    if constexpr (!kBf16Pool) {
      if (more) {
        StoreRows(k_next, ld, quads, 0, stage);
        LoadRows(a, next_slots, quads, 1, stage);
      }
    }
    __syncthreads();

    // New row maxima; P = exp2(S − max) as bf16, partial row sums. Row owners carry the running sum.
    if (warp < kSWarps) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int row = s_tile * 16 + g + half * 8;
        float m = m_cur[row];
#pragma unroll
        for (int j = 0; j < kSSplits; ++j) m = fmaxf(m, red_max[row * kSSplits + j]);
        float part = 0.0f;
#pragma unroll
        for (int n = 0; n < kSN; ++n) {
          const float p0 = s[n][half * 2] == -INFINITY ? 0.0f : exp2f(s[n][half * 2] - m);
          const float p1 = s[n][half * 2 + 1] == -INFINITY ? 0.0f : exp2f(s[n][half * 2 + 1] - m);
          part += p0 + p1;
          *reinterpret_cast<__nv_bfloat162*>(p_s + row * kLdP + s_key0 + n * 8 + c2) = __floats2bfloat162_rn(p0, p1);
        }
        part += __shfl_xor_sync(0xffffffffu, part, 1);
        part += __shfl_xor_sync(0xffffffffu, part, 2);
        if (lane % 4 == 0) red_sum[row * kSSplits + s_split] = part;
      }
    }
    if (tid < kM) {
      const float old = m_cur[tid];
      float m = old;
#pragma unroll
      for (int j = 0; j < kSSplits; ++j) m = fmaxf(m, red_max[tid * kSSplits + j]);
      m_next[tid] = m;
      sum *= old == -INFINITY ? 0.0f : exp2f(old - m);
    }
    __syncthreads();

    if (tid < kM) {
#pragma unroll
      for (int j = 0; j < kSSplits; ++j) sum += red_sum[tid * kSSplits + j];
    }
    // O = O · e^{old max − new max} + P · C for this warp's columns.
    if (warp < kPvWarps) {
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int row = mt * 16 + g + half * 8;
          const float old = m_cur[row];
          const float alpha = old == -INFINITY ? 0.0f : exp2f(old - m_next[row]);
#pragma unroll
          for (int nt = 0; nt < kNT; ++nt) {
            o[mt][nt][half * 2] *= alpha;
            o[mt][nt][half * 2 + 1] *= alpha;
          }
        }
      }
      const int col0 = warp * kCols;
#pragma unroll
      for (int k0 = 0; k0 < kKeys; k0 += 16) {
        uint32_t pa[kMTiles][4];
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt) LdMatrixX4(pa[mt], p_s + (mt * 16 + lane % 16) * kLdP + k0 + (lane / 16) * 8);
        const __nv_bfloat16* v_rows = k_cur + (k0 + ((lane / 8) % 2) * 8 + lane % 8) * ld + col0;
        if constexpr (kNT == 1) {
          uint32_t vb[2];
          LdMatrixX2Trans(vb, v_rows);
#pragma unroll
          for (int mt = 0; mt < kMTiles; ++mt) Mma(o[mt][0], pa[mt], vb[0], vb[1]);
        } else {
          // The next column pair's fragment loads while this pair multiplies.
          uint32_t vb[2][4];
          LdMatrixX4Trans(vb[0], v_rows + (lane / 16) * 8);
#pragma unroll
          for (int np = 0; np < kNT / 2; ++np) {
            if (np + 1 < kNT / 2) LdMatrixX4Trans(vb[(np + 1) % 2], v_rows + (np + 1) * 16 + (lane / 16) * 8);
#pragma unroll
            for (int mt = 0; mt < kMTiles; ++mt) {
              Mma(o[mt][2 * np], pa[mt], vb[np % 2][0], vb[np % 2][1]);
              Mma(o[mt][2 * np + 1], pa[mt], vb[np % 2][2], vb[np % 2][3]);
            }
          }
        }
      }
    }
    if constexpr (kBf16Pool) {
      if (more) WaitCopies();
    } else {
      if (more) StoreRows(k_next, ld, quads, 1, stage);
    }
    __syncthreads();
  }

  if (tid < kM) row_sum[tid] = sum;
  __syncthreads();
  const float* m_final = run_max + (tiles & 1) * kM;
  if (warp < kPvWarps) {
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int row = mt * 16 + g + half * 8;
        if (row >= group_heads) continue;
        const int64_t h = h0 + row;
        const float l = row_sum[row];
        const bool whole = a.splits == 1;  // else a partial result for the merge
        void* dst = whole ? a.out : a.part_o;
        const int64_t at = whole ? r * a.out_stride + h * kLatent : ((r * a.heads + h) * a.splits + blockIdx.z) * kLatent;
        const float norm = whole ? (l > 0.0f ? 1.0f / l : 0.0f) : 1.0f;
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt) {
          const int col = warp * kCols + nt * 8 + c2;
          StorePair(dst, at + col, whole && a.out_bf16, o[mt][nt][half * 2] * norm, o[mt][nt][half * 2 + 1] * norm);
        }
      }
    }
  }
  if (a.splits > 1 && tid < group_heads) {
    const int64_t at = (r * a.heads + h0 + tid) * a.splits + blockIdx.z;
    a.part_ml[at * 2] = m_final[tid];
    a.part_ml[at * 2 + 1] = row_sum[tid];
  }
}

// out[r, h] = Σ_split 2^{m_split − M} O_split / Σ_split 2^{m_split − M} l_split. One block per (r, h).
__global__ void MergeSplitsKernel(const float* part_o, const float* part_ml, int32_t heads, int32_t splits,
                                  int32_t latent, void* out, bool out_bf16, int64_t out_stride) {
  const int64_t r = blockIdx.x / heads;
  const int h = static_cast<int>(blockIdx.x % heads);
  const int64_t base = (r * heads + h) * splits;
  float m = -INFINITY;
  for (int s = 0; s < splits; ++s) {
    if (part_ml[(base + s) * 2 + 1] > 0.0f) m = fmaxf(m, part_ml[(base + s) * 2]);
  }
  float total = 0.0f;
  for (int s = 0; s < splits; ++s) {
    const float l = part_ml[(base + s) * 2 + 1];
    if (l > 0.0f) total += exp2f(part_ml[(base + s) * 2] - m) * l;
  }
  for (int c = threadIdx.x; c < latent; c += blockDim.x) {
    float acc = 0.0f;
    for (int s = 0; s < splits; ++s) {
      const float l = part_ml[(base + s) * 2 + 1];
      if (l > 0.0f) acc += exp2f(part_ml[(base + s) * 2] - m) * part_o[(base + s) * latent + c];
    }
    const float v = total > 0.0f ? acc / total : 0.0f;
    const int64_t at = r * out_stride + int64_t{h} * latent + c;
    if (out_bf16) {
      static_cast<__nv_bfloat16*>(out)[at] = __float2bfloat16_rn(v);
    } else {
      static_cast<float*>(out)[at] = v;
    }
  }
}

int SmCount() {
  static const int count = [] {
    int device = 0, sms = 0;
    if (cudaGetDevice(&device) != cudaSuccess ||
        cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess || sms <= 0) {
      return 132;  // H100 SXM; only the split heuristic depends on it
    }
    return sms;
  }();
  return count;
}

// How a launch covers the work; a function of the shapes alone (and the GPU's SM count).
struct Plan {
  int m_tiles;  // 16-row tiles of heads per block: 1, 2 or 4
  int groups;   // head groups per token (grid.y), more than one only past 64 heads
  int splits;   // key ranges per token (grid.z)
  int keys_per_split;
};

Plan PlanFor(int64_t tokens, int32_t heads, int64_t topk_cols) {
  Plan p{};
  p.m_tiles = heads <= 16 ? 1 : heads <= 32 ? 2 : 4;
  p.groups = static_cast<int>(CeilDiv(heads, 16 * p.m_tiles));
  // Blocks resident per SM: two for one row tile (registers and shared memory allow it), else one.
  const int64_t resident = int64_t{SmCount()} * (p.m_tiles == 1 ? 2 : 1);
  const int64_t tiles = CeilDiv(topk_cols, kKeys);
  const int64_t min_splits = CeilDiv(topk_cols, kMaxKeysPerBlock);
  // Split a token's keys only while the blocks do not yet fill the GPU once; at least two tiles each.
  const int64_t want = std::max<int64_t>(1, resident / std::max<int64_t>(1, tokens * p.groups));
  const int64_t splits = std::clamp<int64_t>(want, min_splits, std::max(min_splits, CeilDiv(tiles, 2)));
  p.keys_per_split = static_cast<int>(CeilDiv(CeilDiv(topk_cols, splits), kKeys) * kKeys);
  p.splits = static_cast<int>(CeilDiv(topk_cols, p.keys_per_split));
  return p;
}

using KernelFn = void (*)(MlaArgs);

// The kernel for (row tiles, latent width, pool type), its shared-memory limit raised once to the
// largest layout (a failure there surfaces as the launch's error).
template <int kMTiles, int kLatent, typename PoolT>
KernelFn Configured() {
  static const cudaError_t raised = cudaFuncSetAttribute(
      SparseMlaKernel<kMTiles, kLatent, PoolT>, cudaFuncAttributeMaxDynamicSharedMemorySize,
      static_cast<int>(LayoutFor(16 * kMTiles, kLatent + kMaxRope, kMaxKeysPerBlock).bytes));
  static_cast<void>(raised);
  return SparseMlaKernel<kMTiles, kLatent, PoolT>;
}

template <int kMTiles, typename PoolT>
KernelFn ForLatent(int64_t latent) {
  switch (latent) {
    case 32: return Configured<kMTiles, 32, PoolT>();
    case 64: return Configured<kMTiles, 64, PoolT>();
    case 128: return Configured<kMTiles, 128, PoolT>();
    case 512: return Configured<kMTiles, 512, PoolT>();
    default: return nullptr;
  }
}

template <typename PoolT>
KernelFn KernelFor(int m_tiles, int64_t latent) {
  switch (m_tiles) {
    case 1: return ForLatent<1, PoolT>(latent);
    case 2: return ForLatent<2, PoolT>(latent);
    default: return ForLatent<4, PoolT>(latent);
  }
}

// Element i of a row is at data + i, and groups of `group` elements can be read with one aligned load.
bool Aligned(const Tensor& t, int64_t group) {
  const int64_t bytes = group * static_cast<int64_t>(DTypeSize(t.dtype));
  return reinterpret_cast<uintptr_t>(t.data) % bytes == 0 && t.stride % group == 0;
}

}  // namespace

size_t SparseMlaScratchBytes(int64_t tokens, int32_t heads, int64_t latent_dim, int64_t topk_cols) {
  if (tokens <= 0 || heads <= 0 || topk_cols <= 0) return 0;
  const Plan p = PlanFor(tokens, heads, topk_cols);
  if (p.splits == 1) return 0;
  return sizeof(float) * static_cast<size_t>(tokens * heads * p.splits) * (latent_dim + 2);
}

std::string SparseMlaAttention(Tensor q_latent, Tensor q_rope, int32_t heads, Tensor latent_pool,
                               const PagedRows& rows, Tensor indices, float scale, Tensor out, void* scratch,
                               cudaStream_t stream) {
  if (!IsFloat(q_latent) || !IsFloat(q_rope) || !IsFloat(latent_pool) || !IsFloat(out) ||
      indices.dtype != DType::kI32 || heads <= 0) {
    return "sparse MLA: queries, pool and output must be f32 or bf16, indices i32";
  }
  const int64_t latent = q_latent.cols / heads, rope = q_rope.cols / heads;
  if (latent * heads != q_latent.cols || rope * heads != q_rope.cols || latent + rope != latent_pool.cols ||
      out.cols != q_latent.cols || out.rows != q_latent.rows || q_rope.rows != q_latent.rows ||
      indices.rows != q_latent.rows) {
    return "sparse MLA: " + q_latent.DebugString() + " / " + q_rope.DebugString() + " over pool " +
           latent_pool.DebugString() + " disagree for " + std::to_string(heads) + " heads";
  }
  // Pool rows move in 16-byte pieces: 4 f32 or 8 bf16 elements.
  const int64_t piece = latent_pool.dtype == DType::kBF16 ? 8 : 4;
  if ((latent + rope) % piece != 0 || rope > kMaxRope || !Aligned(latent_pool, piece) || latent_pool.rows > INT32_MAX) {
    return "sparse MLA: latent+rope must be a multiple of " + std::to_string(piece) + " and rope at most " +
           std::to_string(kMaxRope) + ", pool rows 16-byte aligned (latent " + std::to_string(latent) + ", rope " +
           std::to_string(rope) + ", pool " + latent_pool.DebugString() + ")";
  }
  if (out.dtype == DType::kBF16 && !Aligned(out, 2)) {
    return "sparse MLA: a bf16 output " + out.DebugString() + " is stored in pairs: 4-byte aligned, even stride";
  }
  if (q_latent.rows == 0 || indices.cols == 0) return {};
  const Plan plan = PlanFor(q_latent.rows, heads, indices.cols);
  const KernelFn kernel = DispatchFloat(latent_pool.dtype, [&](auto pool) {
    return KernelFor<decltype(pool)>(plan.m_tiles, latent);
  });
  if (kernel == nullptr) {
    return "sparse MLA: unsupported latent width " + std::to_string(latent) + " (32, 64, 128 or 512)";
  }
  MlaArgs a{};
  a.q_latent = q_latent.data;
  a.ql_stride = q_latent.stride;
  a.ql_bf16 = q_latent.dtype == DType::kBF16;
  a.q_rope = q_rope.data;
  a.qr_stride = q_rope.stride;
  a.qr_bf16 = q_rope.dtype == DType::kBF16;
  a.pool = latent_pool.data;
  a.pool_stride = latent_pool.stride;
  a.indices = indices.ptr<int32_t>();
  a.idx_stride = indices.stride;
  a.topk_cols = static_cast<int32_t>(indices.cols);
  a.rows = rows;
  a.heads = heads;
  a.rope = static_cast<int32_t>(rope);
  a.keys_per_split = plan.keys_per_split;
  a.splits = plan.splits;
  a.q_vec4 = Aligned(q_latent, 4) && Aligned(q_rope, 4);
  a.scale_log2 = scale * kLog2e;
  a.out = out.data;
  a.out_bf16 = out.dtype == DType::kBF16;
  a.out_stride = out.stride;
  if (a.splits > 1) {
    if (scratch == nullptr) return "sparse MLA: split-key scratch missing";
    a.part_o = static_cast<float*>(scratch);
    a.part_ml = a.part_o + q_latent.rows * heads * a.splits * latent;
  }
  const size_t shared = LayoutFor(16 * plan.m_tiles, static_cast<int>(latent + rope), plan.keys_per_split).bytes;
  const dim3 grid(static_cast<unsigned>(q_latent.rows), static_cast<unsigned>(plan.groups),
                  static_cast<unsigned>(plan.splits));
  kernel<<<grid, kThreads, shared, stream>>>(a);
  if (a.splits > 1) {
    MergeSplitsKernel<<<static_cast<unsigned>(q_latent.rows * heads), 128, 0, stream>>>(
        a.part_o, a.part_ml, heads, a.splits, static_cast<int32_t>(latent), a.out, a.out_bf16, a.out_stride);
  }
  return LaunchError();
}

}  // namespace indexcache::cuda
