// Element types of the safetensors format and the conversions the engine needs: checkpoints store
// weights as BF16 (GLM-5), F16, F32, or F8_E4M3 with block scales (the FP8 checkpoints of DeepSeek-V3
// and GLM-5, dequantized by WeightStore::ReadF32), and the CPU reference backend computes in float.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace indexcache {

enum class StDType { kF64, kF32, kF16, kBF16, kF8E4M3, kI64, kI32, kI16, kI8, kU8, kBool };

// "F32", "BF16", ... as written in a safetensors header; anything else is InvalidArgument naming it.
absl::StatusOr<StDType> ParseStDType(std::string_view name);
// The header spelling of `dtype` ("BF16"); ParseStDType(StDTypeName(d)) == d.
std::string_view StDTypeName(StDType dtype);
// Bytes per element (BOOL is one byte per element).
size_t StDTypeSize(StDType dtype);

// Exact widenings: every bf16 and f16 value (subnormals, ±inf, NaN payloads) is a float.
float Bf16ToF32(uint16_t bits);
float F16ToF32(uint16_t bits);
// OCP float8 e4m3fn (torch.float8_e4m3fn): 1 sign, 4 exponent (bias 7), 3 mantissa bits; no
// infinities, S.1111.111 is NaN, the largest magnitude 448; exact in float.
float F8E4M3ToF32(uint8_t bits);
// Narrowing for writers: round to nearest, ties to even; NaN stays a (quiet) NaN, overflow gives inf.
uint16_t F32ToBf16(float value);

// Converts `count` little-endian elements of type `dtype` at `src` (no alignment needed: tensors in
// a mapped file start at any byte) into `dst[0..count)`. Only F32, BF16, F16 and F8_E4M3 (the codes'
// values, before any scale) are accepted; other dtypes are InvalidArgument, since silently turning
// integers into weights would hide a wrong tensor.
absl::Status ConvertToF32(StDType dtype, const std::byte* src, size_t count, float* dst);

}  // namespace indexcache
