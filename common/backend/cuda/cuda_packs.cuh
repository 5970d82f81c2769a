// Vector access to rows of F32 or BF16 storage for the memory-bound kernels (row ops, the MoE gather and
// combine): a thread moves runs of consecutive elements as floats, with 16-byte loads and stores where
// the run is whole and aligned, element by element otherwise (column-slice views such as q_rope start
// anywhere, and the last run of a row may be short).
#pragma once

#include <cstdint>

#include "common/backend/cuda/cuda_common.cuh"

namespace indexcache::cuda {

// Elements per run: one 16-byte access of bf16, two of f32.
constexpr int kPack = 8;

// N elements of T moved as one unit: aligned to 16 bytes, or to its size when smaller (4 bf16 = 8 bytes),
// so that copying it compiles to 16-byte (or 8-byte) accesses.
template <int N, typename T>
struct alignas(N * sizeof(T) < 16 ? N * sizeof(T) : 16) Packed {
  T e[N];
};

// v = the `valid` first elements of p, the rest 0. `vector`: all N are valid and p is aligned as
// Packed<N, T> — one wide load.
template <int N, typename T>
__device__ __forceinline__ void LoadRun(const T* p, int valid, bool vector, float (&v)[N]) {
  if (vector) {
    const Packed<N, T> packed = *reinterpret_cast<const Packed<N, T>*>(p);
#pragma unroll
    for (int i = 0; i < N; ++i) v[i] = ToFloat(packed.e[i]);
  } else {
#pragma unroll
    for (int i = 0; i < N; ++i) v[i] = i < valid ? ToFloat(p[i]) : 0.0f;
  }
}

// A weight row (F32 or BF16 known at run time; the branch is uniform over the launch).
template <int N>
__device__ __forceinline__ void LoadRun(const AnyRows& t, int64_t row, int64_t col, int valid, bool vector,
                                        float (&v)[N]) {
  const int64_t i = row * t.stride + col;
  if (t.bf16) {
    LoadRun(static_cast<const __nv_bfloat16*>(t.data) + i, valid, vector, v);
  } else {
    LoadRun(static_cast<const float*>(t.data) + i, valid, vector, v);
  }
}

// The `valid` first elements of v rounded to T (nearest even) and stored at p.
template <int N, typename T>
__device__ __forceinline__ void StoreRun(T* p, int valid, bool vector, const float (&v)[N]) {
  if (vector) {
    Packed<N, T> packed;
#pragma unroll
    for (int i = 0; i < N; ++i) packed.e[i] = FromFloat<T>(v[i]);
    *reinterpret_cast<Packed<N, T>*>(p) = packed;
  } else {
#pragma unroll
    for (int i = 0; i < N; ++i) {
      if (i < valid) p[i] = FromFloat<T>(v[i]);
    }
  }
}

// Whether runs of kPack elements that start at a column divisible by kPack are aligned in every row of t:
// the data 16-byte aligned and whole runs between row starts (one row needs no stride).
inline bool RunsAligned(const Tensor& t) {
  return reinterpret_cast<uintptr_t>(t.data) % 16 == 0 && (t.rows <= 1 || t.stride % kPack == 0);
}

}  // namespace indexcache::cuda
