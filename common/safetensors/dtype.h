// Element types of the safetensors format and the conversions the engine needs: checkpoints store
// weights as BF16 (GLM-5), F16 or F32, and the CPU reference backend computes in float.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace indexcache {

enum class StDType { kF64, kF32, kF16, kBF16, kI64, kI32, kI16, kI8, kU8, kBool };

// "F32", "BF16", ... as written in a safetensors header; anything else is InvalidArgument naming it.
absl::StatusOr<StDType> ParseStDType(std::string_view name);
// The header spelling of `dtype` ("BF16"); ParseStDType(StDTypeName(d)) == d.
std::string_view StDTypeName(StDType dtype);
// Bytes per element (BOOL is one byte per element).
size_t StDTypeSize(StDType dtype);

// Exact widenings: every bf16 and f16 value (subnormals, ±inf, NaN payloads) is a float.
float Bf16ToF32(uint16_t bits);
float F16ToF32(uint16_t bits);
// Narrowing for writers: round to nearest, ties to even; NaN stays a (quiet) NaN, overflow gives inf.
uint16_t F32ToBf16(float value);

// Converts `count` little-endian elements of type `dtype` at `src` (no alignment needed: tensors in
// a mapped file start at any byte) into `dst[0..count)`. Only F32, BF16 and F16 are accepted; other
// dtypes are InvalidArgument, since silently turning integers into weights would hide a wrong tensor.
absl::Status ConvertToF32(StDType dtype, const std::byte* src, size_t count, float* dst);

}  // namespace indexcache
