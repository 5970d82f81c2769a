// Device helpers shared by the CUDA backend's kernels.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "common/backend/tensor.h"

namespace indexcache::cuda {

// A read-only matrix whose element type (F32 or BF16) is known only at run time: norms, embeddings
// and biases arrive as weights in the backend's weight dtype, or as F32 activations.
struct AnyRows {
  const void* data;
  int64_t stride;
  bool bf16;
  __device__ float at(int64_t row, int64_t col) const {
    const int64_t i = row * stride + col;
    return bf16 ? __bfloat162float(static_cast<const __nv_bfloat16*>(data)[i]) : static_cast<const float*>(data)[i];
  }
};

inline AnyRows AnyRowsOf(const Tensor& t) {
  return AnyRows{t.data, t.stride, t.dtype == DType::kBF16};
}

// Activations and cache rows are stored as F32 or BF16 (Backend::activation_dtype); kernels compute in
// f32 and are instantiated once per storage type: ToFloat on load, FromFloat (round to nearest even)
// on store.
__device__ __forceinline__ float ToFloat(float v) { return v; }
__device__ __forceinline__ float ToFloat(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T>
__device__ __forceinline__ T FromFloat(float v);
template <>
__device__ __forceinline__ float FromFloat<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __nv_bfloat16 FromFloat<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// Calls fn(T{}) with T the storage type of `dtype` (F32 → float, BF16 → __nv_bfloat16); the caller has
// checked that dtype is one of the two.
template <typename Fn>
auto DispatchFloat(DType dtype, Fn&& fn) {
  return dtype == DType::kBF16 ? fn(__nv_bfloat16{}) : fn(float{});
}

inline bool IsFloat(const Tensor& t) { return t.dtype == DType::kF32 || t.dtype == DType::kBF16; }
inline bool IsColumn(const Tensor& t) { return t.dtype == DType::kI32 && t.cols >= 1 && t.stride >= 1; }

// Four floats rounded to bf16 and stored as two 4-byte words (dst 8-byte aligned).
__device__ __forceinline__ void StoreBf16x4(__nv_bfloat16* dst, float4 v) {
  auto* out = reinterpret_cast<__nv_bfloat162*>(dst);
  out[0] = __floats2bfloat162_rn(v.x, v.y);
  out[1] = __floats2bfloat162_rn(v.z, v.w);
}

// The 32-bit shared-memory address PTX instructions (ldmatrix, mbarrier, wgmma descriptors) take.
__device__ __forceinline__ uint32_t SharedAddress(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

inline int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// An empty string when the last launch was accepted, else its error.
inline std::string LaunchError() {
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? std::string() : std::string("kernel launch: ") + cudaGetErrorString(e);
}

}  // namespace indexcache::cuda
