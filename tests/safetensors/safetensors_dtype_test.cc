#include "common/safetensors/dtype.h"

#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace indexcache {
namespace {

using ::testing::HasSubstr;

TEST(StDTypeTest, ParsesEveryHeaderSpellingWithItsSize) {
  // Spellings and sizes from the safetensors format description.
  const struct {
    const char* name;
    StDType dtype;
    size_t size;
  } kCases[] = {{"F64", StDType::kF64, 8},  {"F32", StDType::kF32, 4},  {"F16", StDType::kF16, 2},
                {"BF16", StDType::kBF16, 2}, {"F8_E4M3", StDType::kF8E4M3, 1}, {"I64", StDType::kI64, 8},
                {"I32", StDType::kI32, 4},
                {"I16", StDType::kI16, 2},  {"I8", StDType::kI8, 1},    {"U8", StDType::kU8, 1},
                {"BOOL", StDType::kBool, 1}};
  for (const auto& c : kCases) {
    auto parsed = ParseStDType(c.name);
    ASSERT_TRUE(parsed.ok()) << c.name;
    EXPECT_EQ(*parsed, c.dtype);
    EXPECT_EQ(StDTypeName(c.dtype), c.name);
    EXPECT_EQ(StDTypeSize(c.dtype), c.size) << c.name;
  }
}

TEST(StDTypeTest, UnknownSpellingIsInvalidArgumentNamingIt) {
  for (const char* bad : {"F8_E5M2", "f32", "", "FLOAT", "U16 "}) {
    auto parsed = ParseStDType(bad);
    ASSERT_FALSE(parsed.ok()) << bad;
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(parsed.status().message()), HasSubstr(std::string("\"") + bad + "\""));
  }
}

TEST(Bf16Test, HandComputedBitPatterns) {
  EXPECT_EQ(Bf16ToF32(0x3F80), 1.0f);
  EXPECT_EQ(Bf16ToF32(0xC020), -2.5f);                         // 1 10000000 0100000
  EXPECT_EQ(Bf16ToF32(0x7F7F), std::ldexp(255.0f, 120));       // max: (2 - 2^-7) * 2^127
  EXPECT_EQ(Bf16ToF32(0x0080), std::ldexp(1.0f, -126));        // min normal
  EXPECT_EQ(Bf16ToF32(0x0001), std::ldexp(1.0f, -133));        // min subnormal
  EXPECT_EQ(Bf16ToF32(0x4049), 3.140625f);
  EXPECT_EQ(Bf16ToF32(0x7F80), std::numeric_limits<float>::infinity());
  EXPECT_EQ(Bf16ToF32(0xFF80), -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(Bf16ToF32(0x7FC0)));
  EXPECT_TRUE(std::isnan(Bf16ToF32(0x7F81)));
  const float neg_zero = Bf16ToF32(0x8000);
  EXPECT_EQ(neg_zero, 0.0f);
  EXPECT_TRUE(std::signbit(neg_zero));
}

// Independent formula: bf16 has 8 exponent bits (bias 127) and 7 mantissa bits.
double Bf16Formula(uint16_t bits) {
  const int s = bits >> 15, e = (bits >> 7) & 0xFF, m = bits & 0x7F;
  double magnitude = e == 0 ? std::ldexp(m, -133) : std::ldexp(128 + m, e - 134);
  if (e == 0xFF) magnitude = m == 0 ? INFINITY : NAN;
  return s ? -magnitude : magnitude;
}

// Independent formula: f16 has 5 exponent bits (bias 15) and 10 mantissa bits.
double F16Formula(uint16_t bits) {
  const int s = bits >> 15, e = (bits >> 10) & 0x1F, m = bits & 0x3FF;
  double magnitude = e == 0 ? std::ldexp(m, -24) : std::ldexp(1024 + m, e - 25);
  if (e == 0x1F) magnitude = m == 0 ? INFINITY : NAN;
  return s ? -magnitude : magnitude;
}

TEST(Bf16Test, EveryBitPatternMatchesTheFormula) {
  for (uint32_t b = 0; b <= 0xFFFF; ++b) {
    const double want = Bf16Formula(static_cast<uint16_t>(b));
    const float got = Bf16ToF32(static_cast<uint16_t>(b));
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(got)) << std::hex << b;
    } else {
      EXPECT_EQ(static_cast<double>(got), want) << std::hex << b;
      EXPECT_EQ(std::signbit(got), std::signbit(want)) << std::hex << b;
    }
  }
}

TEST(F16Test, HandComputedBitPatterns) {
  EXPECT_EQ(F16ToF32(0x3C00), 1.0f);
  EXPECT_EQ(F16ToF32(0xC100), -2.5f);                     // 1 10000 0100000000
  EXPECT_EQ(F16ToF32(0x7BFF), 65504.0f);                  // max
  EXPECT_EQ(F16ToF32(0x0400), std::ldexp(1.0f, -14));     // min normal
  EXPECT_EQ(F16ToF32(0x0001), std::ldexp(1.0f, -24));     // min subnormal
  EXPECT_EQ(F16ToF32(0x8001), -std::ldexp(1.0f, -24));
  EXPECT_EQ(F16ToF32(0x0200), std::ldexp(1.0f, -15));     // subnormal, one bit
  EXPECT_EQ(F16ToF32(0x03FF), std::ldexp(1023.0f, -24));  // max subnormal
  EXPECT_EQ(F16ToF32(0x3555), 0.333251953125f);           // (1 + 341/1024) / 4
  EXPECT_EQ(F16ToF32(0x7C00), std::numeric_limits<float>::infinity());
  EXPECT_EQ(F16ToF32(0xFC00), -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(F16ToF32(0x7E00)));
  EXPECT_TRUE(std::isnan(F16ToF32(0x7C01)));  // lowest payload bit must not turn into inf
  EXPECT_TRUE(std::isnan(F16ToF32(0xFFFF)));
  EXPECT_TRUE(std::signbit(F16ToF32(0x8000)));
  EXPECT_EQ(F16ToF32(0x8000), 0.0f);
}

TEST(F16Test, EveryBitPatternMatchesTheFormula) {
  for (uint32_t b = 0; b <= 0xFFFF; ++b) {
    const double want = F16Formula(static_cast<uint16_t>(b));
    const float got = F16ToF32(static_cast<uint16_t>(b));
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(got)) << std::hex << b;
    } else {
      EXPECT_EQ(static_cast<double>(got), want) << std::hex << b;
      EXPECT_EQ(std::signbit(got), std::signbit(want)) << std::hex << b;
    }
  }
}

// float8 e4m3fn by the OCP definition: (-1)^s · 2^(e-7) · (1 + m/8) for e > 0, (-1)^s · 2^-6 · m/8 for
// e = 0, NaN for S.1111.111 (there are no infinities), computed in double with ldexp.
double E4m3Formula(uint8_t b) {
  const int s = b >> 7, e = (b >> 3) & 0xF, m = b & 0x7;
  if (e == 0xF && m == 0x7) return std::nan("");
  const double magnitude = e == 0 ? std::ldexp(m / 8.0, -6) : std::ldexp(1.0 + m / 8.0, e - 7);
  return s != 0 ? -magnitude : magnitude;
}

TEST(F8E4M3Test, HandComputedBitPatterns) {
  EXPECT_EQ(F8E4M3ToF32(0x38), 1.0f);
  EXPECT_EQ(F8E4M3ToF32(0xB8), -1.0f);
  EXPECT_EQ(F8E4M3ToF32(0x40), 2.0f);
  EXPECT_EQ(F8E4M3ToF32(0x3C), 1.5f);
  EXPECT_EQ(F8E4M3ToF32(0x7E), 448.0f);   // the largest finite value
  EXPECT_EQ(F8E4M3ToF32(0xFE), -448.0f);
  EXPECT_EQ(F8E4M3ToF32(0x08), 0.015625f);     // 2^-6, the smallest normal
  EXPECT_EQ(F8E4M3ToF32(0x01), 0.001953125f);  // 2^-9, the smallest subnormal
  EXPECT_EQ(F8E4M3ToF32(0x07), 0.013671875f);  // 7 · 2^-9
  EXPECT_EQ(F8E4M3ToF32(0x00), 0.0f);
  EXPECT_TRUE(std::signbit(F8E4M3ToF32(0x80)));  // -0
  EXPECT_TRUE(std::isnan(F8E4M3ToF32(0x7F)));
  EXPECT_TRUE(std::isnan(F8E4M3ToF32(0xFF)));
  EXPECT_EQ(F8E4M3ToF32(0x78), 256.0f);  // e = 15 is finite except for m = 7
}

TEST(F8E4M3Test, EveryBitPatternMatchesTheFormula) {
  for (uint32_t b = 0; b <= 0xFF; ++b) {
    const double want = E4m3Formula(static_cast<uint8_t>(b));
    const float got = F8E4M3ToF32(static_cast<uint8_t>(b));
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(got)) << std::hex << b;
    } else {
      EXPECT_EQ(static_cast<double>(got), want) << std::hex << b;
      EXPECT_EQ(std::signbit(got), std::signbit(want)) << std::hex << b;
    }
  }
}

TEST(F32ToBf16Test, HandComputedRounding) {
  EXPECT_EQ(F32ToBf16(1.0f), 0x3F80);
  EXPECT_EQ(F32ToBf16(-2.5f), 0xC020);
  EXPECT_EQ(F32ToBf16(-0.0f), 0x8000);
  // bf16 spacing at 1.0 is 2^-7; 1 + 2^-8 is exactly halfway between 0x3F80 (even) and 0x3F81.
  EXPECT_EQ(F32ToBf16(1.0f + std::ldexp(1.0f, -8)), 0x3F80);
  // 1 + 3 * 2^-8 is halfway between 0x3F81 (odd) and 0x3F82 (even).
  EXPECT_EQ(F32ToBf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3F82);
  EXPECT_EQ(F32ToBf16(1.0f + std::ldexp(1.0f, -8) + std::ldexp(1.0f, -20)), 0x3F81);  // above half
  EXPECT_EQ(F32ToBf16(1.0f + std::ldexp(1.0f, -8) - std::ldexp(1.0f, -20)), 0x3F80);  // below half
  EXPECT_EQ(F32ToBf16(-(1.0f + 3 * std::ldexp(1.0f, -8))), 0xBF82);
  // Subnormals: bf16's smallest step is 2^-133; 2^-134 ties to 0 (even), 3 * 2^-134 ties to 2.
  EXPECT_EQ(F32ToBf16(std::ldexp(1.0f, -134)), 0x0000);
  EXPECT_EQ(F32ToBf16(std::ldexp(3.0f, -134)), 0x0002);
  EXPECT_EQ(F32ToBf16(std::ldexp(1.0f, -149)), 0x0000);
  // Overflow: FLT_MAX lies above bf16 max + half a step, so it rounds to inf.
  EXPECT_EQ(F32ToBf16(std::numeric_limits<float>::max()), 0x7F80);
  EXPECT_EQ(F32ToBf16(std::numeric_limits<float>::infinity()), 0x7F80);
  EXPECT_EQ(F32ToBf16(-std::numeric_limits<float>::infinity()), 0xFF80);
  EXPECT_TRUE(std::isnan(Bf16ToF32(F32ToBf16(std::numeric_limits<float>::quiet_NaN()))));
  // A NaN whose payload sits only in the low 16 bits must not truncate to inf.
  EXPECT_TRUE(std::isnan(Bf16ToF32(F32ToBf16(std::bit_cast<float>(0x7F800001u)))));
  EXPECT_TRUE(std::isnan(Bf16ToF32(F32ToBf16(std::bit_cast<float>(0xFF800001u)))));
}

TEST(F32ToBf16Test, RandomFloatsRoundToNearestEven) {
  std::mt19937 rng(1234);
  for (int i = 0; i < 200000; ++i) {
    const float x = std::bit_cast<float>(static_cast<uint32_t>(rng()));
    if (!std::isfinite(x)) continue;
    const uint16_t r = F32ToBf16(x);
    const double got = Bf16Formula(r);
    if (std::isinf(got)) {
      // Only values at or past bf16 max + half a step ((2 - 2^-8) * 2^127) may round to inf.
      EXPECT_GE(std::fabs(static_cast<double>(x)), std::ldexp(511.0, 119)) << x;
      continue;
    }
    // Neighbours one step either way (same sign, so the magnitude moves by one ulp).
    const double err = std::fabs(got - x);
    for (const int step : {-1, 1}) {
      const uint16_t n = static_cast<uint16_t>(r + step);
      if (((n ^ r) & 0x8000) != 0 || ((n >> 7) & 0xFF) == 0xFF) continue;
      const double other = std::fabs(Bf16Formula(n) - x);
      EXPECT_LE(err, other) << "x=" << x << " bits=" << std::hex << r;
      if (err == other) {
        EXPECT_EQ(r & 1, 0) << "tie not to even, x=" << x;
      }
    }
  }
}

TEST(ConvertToF32Test, ReadsUnalignedElements) {
  // One leading byte makes every element start at an odd address.
  std::vector<std::byte> buf(1 + 3 * 4);
  const float f32[3] = {1.0f, -2.5f, 65504.0f};
  std::memcpy(buf.data() + 1, f32, sizeof(f32));
  float out[3];
  ASSERT_TRUE(ConvertToF32(StDType::kF32, buf.data() + 1, 3, out).ok());
  EXPECT_THAT(out, ::testing::ElementsAre(1.0f, -2.5f, 65504.0f));

  const uint16_t bf16[3] = {0x3F80, 0xC020, 0x0001};
  std::memcpy(buf.data() + 1, bf16, sizeof(bf16));
  ASSERT_TRUE(ConvertToF32(StDType::kBF16, buf.data() + 1, 3, out).ok());
  EXPECT_THAT(out, ::testing::ElementsAre(1.0f, -2.5f, std::ldexp(1.0f, -133)));

  const uint16_t f16[3] = {0x3C00, 0xC100, 0x0001};
  std::memcpy(buf.data() + 1, f16, sizeof(f16));
  ASSERT_TRUE(ConvertToF32(StDType::kF16, buf.data() + 1, 3, out).ok());
  EXPECT_THAT(out, ::testing::ElementsAre(1.0f, -2.5f, std::ldexp(1.0f, -24)));
}

TEST(ConvertToF32Test, RejectsNonFloatDtypes) {
  std::byte buf[8] = {};
  float out[2];
  for (StDType d : {StDType::kF64, StDType::kI64, StDType::kI32, StDType::kI16, StDType::kI8, StDType::kU8,
                    StDType::kBool}) {
    absl::Status status = ConvertToF32(d, buf, 1, out);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(status.message()), HasSubstr(std::string(StDTypeName(d))));
  }
}

}  // namespace
}  // namespace indexcache
