#include "common/safetensors/safetensors_file.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/safetensors/test_files.h"

namespace indexcache {
namespace {

using ::indexcache::testing::AssembleFile;
using ::indexcache::testing::MakeTempDir;
using ::indexcache::testing::WriteBytes;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

const std::string kFixture = std::string(INDEXCACHE_TEST_DATA) + "/safetensors/fixture.safetensors";

template <typename T>
std::vector<T> Values(const TensorView& t) {
  std::vector<T> out(t.nbytes / sizeof(T));
  if (!out.empty()) std::memcpy(out.data(), t.data, t.nbytes);
  return out;
}

// Values and layout written by tools/make_safetensors_fixture.py through numpy.
TEST(SafetensorsFileTest, ReadsTheNumpyFixture) {
  auto file = SafetensorsFile::Open(kFixture);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_THAT(file->Names(), ElementsAre("bf16", "bool", "empty", "f16", "f32", "f64", "i16", "i32", "i64",
                                         "i8", "scalar", "u8"));
  EXPECT_THAT(file->metadata(), ElementsAre(std::pair<const std::string, std::string>("format", "pt"),
                                            std::pair<const std::string, std::string>(
                                                "made_by", "make_safetensors_fixture.py")));
  // The fixture's header length is not a multiple of 8: the data section is unaligned.
  EXPECT_NE(reinterpret_cast<uintptr_t>(file->data_section().data()) % 4, 0u);

  const TensorView* f32 = file->Find("f32");
  ASSERT_NE(f32, nullptr);
  EXPECT_EQ(f32->name, "f32");
  EXPECT_EQ(f32->dtype, StDType::kF32);
  EXPECT_THAT(f32->shape, ElementsAre(2, 3));
  EXPECT_EQ(f32->nbytes, 24u);
  EXPECT_THAT(Values<float>(*f32), ElementsAre(-0.5f, -0.25f, 0.0f, 0.25f, 0.5f, 0.75f));

  const TensorView* bf16 = file->Find("bf16");
  ASSERT_NE(bf16, nullptr);
  EXPECT_EQ(bf16->dtype, StDType::kBF16);
  EXPECT_THAT(bf16->shape, ElementsAre(2, 2));
  std::vector<float> converted(4);
  ASSERT_TRUE(ConvertToF32(bf16->dtype, bf16->data, 4, converted.data()).ok());
  EXPECT_THAT(converted, ElementsAre(1.0f, -2.5f, 3.140625f, std::ldexp(1.0f, -133)));

  const TensorView* f16 = file->Find("f16");
  ASSERT_NE(f16, nullptr);
  EXPECT_EQ(f16->dtype, StDType::kF16);
  EXPECT_THAT(Values<uint16_t>(*f16), ElementsAre(0x3C00, 0xC100, 0x7BFF, 0x0001));  // numpy's encoding
  ASSERT_TRUE(ConvertToF32(f16->dtype, f16->data, 4, converted.data()).ok());
  EXPECT_THAT(converted, ElementsAre(1.0f, -2.5f, 65504.0f, std::ldexp(1.0f, -24)));

  EXPECT_THAT(Values<double>(*file->Find("f64")), ElementsAre(1.5, -2.25, 1e300));
  EXPECT_THAT(Values<int64_t>(*file->Find("i64")), ElementsAre(-1, int64_t{1} << 40, 7));
  EXPECT_THAT(Values<int32_t>(*file->Find("i32")), ElementsAre(-123456, 7));
  EXPECT_THAT(Values<int16_t>(*file->Find("i16")), ElementsAre(-300, 300));
  EXPECT_THAT(Values<int8_t>(*file->Find("i8")), ElementsAre(-128, 0, 127));
  EXPECT_THAT(Values<uint8_t>(*file->Find("u8")), ElementsAre(0, 255));
  EXPECT_THAT(Values<uint8_t>(*file->Find("bool")), ElementsAre(1, 0, 1));
  EXPECT_EQ(file->Find("bool")->dtype, StDType::kBool);

  const TensorView* scalar = file->Find("scalar");
  ASSERT_NE(scalar, nullptr);
  EXPECT_TRUE(scalar->shape.empty());
  EXPECT_THAT(Values<float>(*scalar), ElementsAre(42.0f));
  const TensorView* empty = file->Find("empty");
  ASSERT_NE(empty, nullptr);
  EXPECT_THAT(empty->shape, ElementsAre(0, 4));
  EXPECT_EQ(empty->nbytes, 0u);

  EXPECT_EQ(file->Find("missing"), nullptr);
  EXPECT_EQ(file->Find("__metadata__"), nullptr);
}

TEST(SafetensorsFileTest, ViewsSurviveMovingTheFile) {
  auto opened = SafetensorsFile::Open(kFixture);
  ASSERT_TRUE(opened.ok()) << opened.status();
  const TensorView* before = opened->Find("f32");
  SafetensorsFile moved = *std::move(opened);
  EXPECT_EQ(moved.Find("f32"), before);
  EXPECT_THAT(Values<float>(*before), ElementsAre(-0.5f, -0.25f, 0.0f, 0.25f, 0.5f, 0.75f));
  SafetensorsFile assigned = std::move(moved);
  EXPECT_EQ(assigned.Find("f32"), before);
  EXPECT_EQ(moved.Find("f32"), nullptr);  // NOLINT(bugprone-use-after-move): moved-from is empty
  EXPECT_EQ(assigned.path(), kFixture);
}

TEST(SafetensorsFileTest, AcceptsEmptyHeaderPaddingAndZeroSizedTensors) {
  const std::string dir = MakeTempDir();
  WriteBytes(dir + "/a.safetensors", AssembleFile("{}", ""));
  auto empty = SafetensorsFile::Open(dir + "/a.safetensors");
  ASSERT_TRUE(empty.ok()) << empty.status();
  EXPECT_TRUE(empty->Names().empty());

  // Trailing spaces (the format's padding) and two empty tensors at the same offset.
  WriteBytes(dir + "/b.safetensors",
             AssembleFile(R"({"x":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},)"
                          R"("y":{"dtype":"I8","shape":[2,0],"data_offsets":[0,0]},)"
                          R"("z":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}     )",
                          "ab"));
  auto b = SafetensorsFile::Open(dir + "/b.safetensors");
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_THAT(b->Names(), ElementsAre("x", "y", "z"));
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(b->Find("z")->data), 2), "ab");
}

// Writes `bytes` as a file and expects Open to fail with `code` and a message holding the file
// path and every one of `fragments`.
void ExpectError(const std::string& bytes, absl::StatusCode code, std::vector<std::string> fragments) {
  const std::string path = MakeTempDir() + "/bad.safetensors";
  WriteBytes(path, bytes);
  auto file = SafetensorsFile::Open(path);
  ASSERT_FALSE(file.ok()) << "accepted: " << bytes.substr(8);
  EXPECT_EQ(file.status().code(), code) << file.status();
  EXPECT_THAT(std::string(file.status().message()), HasSubstr(path));
  for (const std::string& f : fragments) EXPECT_THAT(std::string(file.status().message()), HasSubstr(f));
}

// A one-tensor header with the given field values (raw JSON text).
std::string Entry(const std::string& dtype, const std::string& shape, const std::string& offsets) {
  return R"({"w":{"dtype":)" + dtype + R"(,"shape":)" + shape + R"(,"data_offsets":)" + offsets + "}}";
}

TEST(SafetensorsFileErrorsTest, FileLevel) {
  const std::string dir = MakeTempDir();
  auto missing = SafetensorsFile::Open(dir + "/nope.safetensors");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr("nope.safetensors"));

  auto directory = SafetensorsFile::Open(dir);
  EXPECT_EQ(directory.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(directory.status().message()), HasSubstr("not a regular file"));

  ExpectError("", absl::StatusCode::kInvalidArgument, {"0 bytes", "shorter than"});
  ExpectError("1234567", absl::StatusCode::kInvalidArgument, {"7 bytes", "shorter than"});
  // Header length 16 but only 2 bytes follow.
  ExpectError(std::string("\x10\0\0\0\0\0\0\0{}", 10), absl::StatusCode::kInvalidArgument, {"runs past"});
  // Header length 2^40: absurd, refused before anything else.
  ExpectError(std::string("\0\0\0\0\0\x01\0\0{}", 10), absl::StatusCode::kInvalidArgument,
              {"1099511627776", "limit"});
  ExpectError(AssembleFile("{\"w\":", ""), absl::StatusCode::kInvalidArgument, {"not valid JSON"});
  ExpectError(AssembleFile("", ""), absl::StatusCode::kInvalidArgument, {"not valid JSON"});
  ExpectError(AssembleFile("[1,2]", ""), absl::StatusCode::kInvalidArgument, {"not a JSON object"});
  ExpectError(AssembleFile("\"w\"", ""), absl::StatusCode::kInvalidArgument, {"not a JSON object"});
}

TEST(SafetensorsFileErrorsTest, EntryFields) {
  const absl::StatusCode kInvalid = absl::StatusCode::kInvalidArgument;
  const std::string data(16, 'x');
  ExpectError(AssembleFile(R"({"w":3})", data), kInvalid, {"\"w\"", "entry must be an object, got 3"});
  ExpectError(AssembleFile(R"({"w":{"shape":[4],"data_offsets":[0,4]}})", data), kInvalid,
              {"\"w\"", "missing \"dtype\""});
  ExpectError(AssembleFile(R"({"w":{"dtype":"U8","data_offsets":[0,4]}})", data), kInvalid,
              {"\"w\"", "missing \"shape\""});
  ExpectError(AssembleFile(R"({"w":{"dtype":"U8","shape":[4]}})", data), kInvalid,
              {"\"w\"", "missing \"data_offsets\""});
  ExpectError(AssembleFile(Entry("\"F8_E5M2\"", "[4]", "[0,4]"), data), kInvalid, {"\"w\"", "F8_E5M2"});
  ExpectError(AssembleFile(Entry("4", "[4]", "[0,4]"), data), kInvalid, {"\"w\"", "dtype must be a string"});
  ExpectError(AssembleFile(Entry("\"U8\"", "4", "[0,4]"), data), kInvalid, {"\"w\"", "shape must be an array"});
  ExpectError(AssembleFile(Entry("\"U8\"", "[-4]", "[0,4]"), data), kInvalid, {"\"w\"", "-4", "negative"});
  ExpectError(AssembleFile(Entry("\"U8\"", "[4.0]", "[0,4]"), data), kInvalid, {"\"w\"", "non-negative integer"});
  ExpectError(AssembleFile(Entry("\"U8\"", "[\"4\"]", "[0,4]"), data), kInvalid, {"\"w\"", "non-negative integer"});
  ExpectError(AssembleFile(Entry("\"U8\"", "[9223372036854775808]", "[0,4]"), data), kInvalid,
              {"\"w\"", "too large"});
  ExpectError(AssembleFile(Entry("\"U8\"", "[99999999999999999999999]", "[0,4]"), data), kInvalid,
              {"\"w\"", "non-negative integer"});
}

TEST(SafetensorsFileErrorsTest, Offsets) {
  const absl::StatusCode kInvalid = absl::StatusCode::kInvalidArgument;
  const std::string data(16, 'x');
  ExpectError(AssembleFile(Entry("\"U8\"", "[4]", "[4]"), data), kInvalid, {"\"w\"", "[begin, end]"});
  ExpectError(AssembleFile(Entry("\"U8\"", "[4]", "[0,4,8]"), data), kInvalid, {"\"w\"", "[begin, end]"});
  ExpectError(AssembleFile(Entry("\"U8\"", "[4]", "{}"), data), kInvalid, {"\"w\"", "[begin, end]"});
  ExpectError(AssembleFile(Entry("\"U8\"", "[4]", "[8,4]"), data), kInvalid, {"\"w\"", "begin 8 > end 4"});
  ExpectError(AssembleFile(Entry("\"U8\"", "[4]", "[-4,0]"), data), kInvalid, {"\"w\"", "negative"});
  ExpectError(AssembleFile(Entry("\"U8\"", "[4]", "[0,4.5]"), data), kInvalid, {"\"w\"", "non-negative integer"});
  ExpectError(AssembleFile(Entry("\"U8\"", "[4]", "[14,18]"), data), kInvalid,
              {"\"w\"", "end 18 is beyond the data section (16 bytes)"});
  ExpectError(AssembleFile(Entry("\"U8\"", "[4]", "[0,18446744073709551615]"), data), kInvalid,
              {"\"w\"", "too large"});
}

TEST(SafetensorsFileErrorsTest, SizesAndOverlaps) {
  const absl::StatusCode kInvalid = absl::StatusCode::kInvalidArgument;
  const std::string data(16, 'x');
  // 3 F32 elements need 12 bytes, not 8.
  ExpectError(AssembleFile(Entry("\"F32\"", "[3]", "[0,8]"), data), kInvalid, {"\"w\"", "hold 8 bytes", "needs 12"});
  ExpectError(AssembleFile(Entry("\"F32\"", "[]", "[0,8]"), data), kInvalid, {"\"w\"", "needs 4"});
  // 2^32 * 2^32 U8 elements wrap a 64-bit count to 0, which would match empty offsets.
  ExpectError(AssembleFile(Entry("\"U8\"", "[4294967296,4294967296]", "[0,0]"), data), kInvalid,
              {"\"w\"", "overflows"});
  // 2^62 F32 elements: the element count fits, the byte count does not.
  ExpectError(AssembleFile(Entry("\"F32\"", "[4611686018427387904]", "[0,0]"), data), kInvalid,
              {"\"w\"", "overflows"});
  ExpectError(AssembleFile(R"({"a":{"dtype":"U8","shape":[8],"data_offsets":[0,8]},)"
                           R"("b":{"dtype":"U8","shape":[8],"data_offsets":[7,15]}})",
                           data),
              kInvalid, {"\"a\" and \"b\" overlap"});
  ExpectError(AssembleFile(R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[4,6]},)"
                           R"("b":{"dtype":"U8","shape":[16],"data_offsets":[0,16]}})",
                           data),
              kInvalid, {"overlap"});
  ExpectError(AssembleFile(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
                           R"("a":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}})",
                           data),
              kInvalid, {"\"a\" more than once"});
}

TEST(SafetensorsFileErrorsTest, Metadata) {
  const absl::StatusCode kInvalid = absl::StatusCode::kInvalidArgument;
  ExpectError(AssembleFile(R"({"__metadata__":{"format":1}})", ""), kInvalid, {"__metadata__[\"format\"]"});
  ExpectError(AssembleFile(R"({"__metadata__":["pt"]})", ""), kInvalid, {"__metadata__ must be an object"});
}

}  // namespace
}  // namespace indexcache
