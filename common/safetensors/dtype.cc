#include "common/safetensors/dtype.h"

#include <array>
#include <bit>
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"

namespace indexcache {

// safetensors stores elements little-endian; the conversions below copy them as host integers.
static_assert(std::endian::native == std::endian::little, "safetensors reading assumes a little-endian host");

namespace {

struct DTypeInfo {
  StDType dtype;
  std::string_view name;
  size_t size;
};

constexpr std::array<DTypeInfo, 11> kDTypes = {{
    {StDType::kF64, "F64", 8},
    {StDType::kF32, "F32", 4},
    {StDType::kF16, "F16", 2},
    {StDType::kBF16, "BF16", 2},
    {StDType::kF8E4M3, "F8_E4M3", 1},
    {StDType::kI64, "I64", 8},
    {StDType::kI32, "I32", 4},
    {StDType::kI16, "I16", 2},
    {StDType::kI8, "I8", 1},
    {StDType::kU8, "U8", 1},
    {StDType::kBool, "BOOL", 1},
}};

const DTypeInfo& Info(StDType dtype) {
  for (const DTypeInfo& info : kDTypes) {
    if (info.dtype == dtype) return info;
  }
  return kDTypes[0];  // unreachable for a valid enum value
}

uint16_t LoadU16(const std::byte* p) {
  uint16_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

}  // namespace

absl::StatusOr<StDType> ParseStDType(std::string_view name) {
  for (const DTypeInfo& info : kDTypes) {
    if (info.name == name) return info.dtype;
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown safetensors dtype \"", std::string(name), "\""));
}

std::string_view StDTypeName(StDType dtype) { return Info(dtype).name; }

size_t StDTypeSize(StDType dtype) { return Info(dtype).size; }

float Bf16ToF32(uint16_t bits) {
  // bf16 is the upper half of an IEEE float: same sign, exponent and leading mantissa bits.
  return std::bit_cast<float>(static_cast<uint32_t>(bits) << 16);
}

float F16ToF32(uint16_t bits) {
  const uint32_t sign = static_cast<uint32_t>(bits & 0x8000u) << 16;
  const uint32_t exponent = (bits >> 10) & 0x1Fu;
  uint32_t mantissa = bits & 0x3FFu;
  if (exponent == 0x1F) {
    // inf (mantissa 0) or NaN (payload kept, so it stays non-zero and stays NaN).
    return std::bit_cast<float>(sign | 0x7F800000u | (mantissa << 13));
  }
  if (exponent == 0) {
    if (mantissa == 0) return std::bit_cast<float>(sign);  // ±0
    // Subnormal: value = mantissa * 2^-24. Shift the leading one up to the implicit-bit position
    // (bit 10); each shift lowers the exponent by one. Every f16 subnormal is a normal float.
    int32_t e = -14;
    while ((mantissa & 0x400u) == 0) {
      mantissa <<= 1;
      --e;
    }
    mantissa &= 0x3FFu;
    return std::bit_cast<float>(sign | (static_cast<uint32_t>(e + 127) << 23) | (mantissa << 13));
  }
  return std::bit_cast<float>(sign | ((exponent - 15 + 127) << 23) | (mantissa << 13));
}

float F8E4M3ToF32(uint8_t bits) {
  const uint32_t sign = static_cast<uint32_t>(bits & 0x80u) << 24;
  const uint32_t exponent = (bits >> 3) & 0xFu;
  const uint32_t mantissa = bits & 0x7u;
  if (exponent == 0xF && mantissa == 0x7) return std::bit_cast<float>(sign | 0x7FC00000u);  // NaN
  if (exponent == 0) {
    // Subnormal: mantissa · 2^-9, exact in float (a multiple of a power of two).
    const float magnitude = static_cast<float>(mantissa) * 0.001953125f;
    return sign != 0 ? -magnitude : magnitude;
  }
  return std::bit_cast<float>(sign | ((exponent - 7 + 127) << 23) | (mantissa << 20));
}

uint16_t F32ToBf16(float value) {
  const uint32_t bits = std::bit_cast<uint32_t>(value);
  if ((bits & 0x7FFFFFFFu) > 0x7F800000u) {
    // NaN: truncating could clear every kept mantissa bit (turning it into inf); force the quiet bit.
    return static_cast<uint16_t>((bits >> 16) | 0x0040u);
  }
  // Adding 0x7FFF rounds halves down and anything above up; the extra lsb of the kept part turns
  // exact halves into round-to-even. A carry into the exponent is the correct rounding (up to inf).
  const uint32_t lsb = (bits >> 16) & 1u;
  return static_cast<uint16_t>((bits + 0x7FFFu + lsb) >> 16);
}

absl::Status ConvertToF32(StDType dtype, const std::byte* src, size_t count, float* dst) {
  switch (dtype) {
    case StDType::kF32:
      if (count > 0) std::memcpy(dst, src, count * sizeof(float));
      return absl::OkStatus();
    case StDType::kBF16:
      for (size_t i = 0; i < count; ++i) dst[i] = Bf16ToF32(LoadU16(src + 2 * i));
      return absl::OkStatus();
    case StDType::kF16:
      for (size_t i = 0; i < count; ++i) dst[i] = F16ToF32(LoadU16(src + 2 * i));
      return absl::OkStatus();
    case StDType::kF8E4M3:
      for (size_t i = 0; i < count; ++i) dst[i] = F8E4M3ToF32(static_cast<uint8_t>(src[i]));
      return absl::OkStatus();
    default:
      return absl::InvalidArgumentError(absl::StrCat("cannot convert dtype ", std::string(StDTypeName(dtype)),
                                                     " to F32 (only F32, BF16, F16, F8_E4M3)"));
  }
}

}  // namespace indexcache
