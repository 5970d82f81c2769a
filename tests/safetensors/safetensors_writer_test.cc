#include "common/safetensors/safetensors_writer.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "common/safetensors/safetensors_file.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/safetensors/test_files.h"

namespace indexcache {
namespace {

using ::indexcache::testing::MakeTempDir;
using ::indexcache::testing::ReadBytes;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

template <typename T>
std::vector<std::byte> Bytes(std::initializer_list<T> values) {
  std::vector<std::byte> out(values.size() * sizeof(T));
  std::memcpy(out.data(), std::data(values), out.size());
  return out;
}

// One tensor of every dtype, with hand-chosen element bytes.
std::vector<TensorToWrite> EveryDtype() {
  return {
      {"f64", StDType::kF64, {2}, Bytes<double>({1.5, -1e300})},
      {"f32", StDType::kF32, {2, 2}, Bytes<float>({1.0f, -2.5f, 0.0f, 3.0f})},
      {"f16", StDType::kF16, {3}, Bytes<uint16_t>({0x3C00, 0xC100, 0x0001})},
      {"bf16", StDType::kBF16, {1, 3}, Bytes<uint16_t>({0x3F80, 0xC020, 0x7F80})},
      {"i64", StDType::kI64, {1}, Bytes<int64_t>({-(int64_t{1} << 50)})},
      {"i32", StDType::kI32, {2}, Bytes<int32_t>({-7, 1 << 30})},
      {"i16", StDType::kI16, {2}, Bytes<int16_t>({-32768, 32767})},
      {"i8", StDType::kI8, {3}, Bytes<int8_t>({-1, 0, 1})},
      {"u8", StDType::kU8, {2, 1, 1}, Bytes<uint8_t>({7, 200})},
      {"bool", StDType::kBool, {2}, Bytes<uint8_t>({1, 0})},
      {"scalar", StDType::kF32, {}, Bytes<float>({9.0f})},
      {"empty", StDType::kI32, {3, 0}, {}},
  };
}

TEST(SafetensorsWriterTest, RoundTripsEveryDtype) {
  const std::string path = MakeTempDir() + "/all.safetensors";
  const std::vector<TensorToWrite> tensors = EveryDtype();
  ASSERT_TRUE(WriteSafetensors(path, tensors, {{"format", "pt"}, {"note", "round trip"}}).ok());

  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->Names().size(), tensors.size());
  for (const TensorToWrite& want : tensors) {
    const TensorView* got = file->Find(want.name);
    ASSERT_NE(got, nullptr) << want.name;
    EXPECT_EQ(got->dtype, want.dtype) << want.name;
    EXPECT_EQ(got->shape, want.shape) << want.name;
    ASSERT_EQ(got->nbytes, want.bytes.size()) << want.name;
    if (got->nbytes > 0) {
      EXPECT_EQ(std::memcmp(got->data, want.bytes.data(), got->nbytes), 0) << want.name;
    }
  }
  EXPECT_EQ(file->metadata().at("note"), "round trip");
  EXPECT_EQ(file->metadata().size(), 2u);
}

TEST(SafetensorsWriterTest, LayoutFollowsTheFormat) {
  const std::string path = MakeTempDir() + "/layout.safetensors";
  ASSERT_TRUE(WriteSafetensors(path, EveryDtype()).ok());
  const std::string bytes = ReadBytes(path);
  uint64_t header_size = 0;
  for (int i = 7; i >= 0; --i) header_size = (header_size << 8) | static_cast<unsigned char>(bytes[i]);
  EXPECT_EQ(header_size % 8, 0u);
  const std::string header = bytes.substr(8, header_size);
  const size_t end = header.find_last_not_of(' ');
  EXPECT_EQ(header[end], '}');  // padding is spaces only
  EXPECT_LT(header.size() - end - 1, 8u);
  // No __metadata__ entry when there is none.
  EXPECT_EQ(header.find("__metadata__"), std::string::npos);

  // Tensors lie back to back in name order, starting at offset 0 and ending at the file's end.
  const nlohmann::json json = nlohmann::json::parse(header);
  std::vector<std::string> names;
  for (const auto& [name, entry] : json.items()) names.push_back(name);  // nlohmann sorts keys
  uint64_t expected_begin = 0;
  for (const std::string& name : names) {
    EXPECT_EQ(json[name]["data_offsets"][0].get<uint64_t>(), expected_begin) << name;
    expected_begin = json[name]["data_offsets"][1].get<uint64_t>();
  }
  EXPECT_EQ(8 + header_size + expected_begin, bytes.size());
  // The first tensor by name is "bf16": its bytes open the data section.
  EXPECT_EQ(names.front(), "bf16");
  EXPECT_EQ(static_cast<unsigned char>(bytes[8 + header_size]), 0x80);
  EXPECT_EQ(static_cast<unsigned char>(bytes[8 + header_size + 1]), 0x3F);
}

TEST(SafetensorsWriterTest, OverwritesAndLeavesNoTemporaryFile) {
  const std::string dir = MakeTempDir();
  const std::string path = dir + "/w.safetensors";
  ASSERT_TRUE(WriteSafetensors(path, EveryDtype()).ok());
  ASSERT_TRUE(WriteSafetensors(path, {{"only", StDType::kU8, {1}, Bytes<uint8_t>({5})}}).ok());
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_THAT(file->Names(), ElementsAre("only"));
  size_t entries = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator(dir)) ++entries;
  EXPECT_EQ(entries, 1u);
}

TEST(SafetensorsWriterTest, RejectsBadTensorsWithoutWriting) {
  const std::string path = MakeTempDir() + "/bad.safetensors";
  const struct {
    std::vector<TensorToWrite> tensors;
    const char* fragment;
  } kCases[] = {
      {{{"", StDType::kU8, {1}, Bytes<uint8_t>({1})}}, "invalid tensor name"},
      {{{"__metadata__", StDType::kU8, {1}, Bytes<uint8_t>({1})}}, "invalid tensor name"},
      {{{"a", StDType::kU8, {-1}, {}}}, "negative dim -1"},
      {{{"a", StDType::kF32, {2}, Bytes<float>({1.0f})}}, "has 4 bytes, its shape and dtype need 8"},
      {{{"a", StDType::kU8, {1}, Bytes<uint8_t>({1})}, {"a", StDType::kU8, {1}, Bytes<uint8_t>({2})}},
       "\"a\" given twice"},
      {{{"a", StDType::kU8, {int64_t{1} << 32, int64_t{1} << 32}, {}}}, "overflows"},
  };
  for (const auto& c : kCases) {
    absl::Status status = WriteSafetensors(path, c.tensors);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << c.fragment;
    EXPECT_THAT(std::string(status.message()), HasSubstr(c.fragment));
    EXPECT_FALSE(std::filesystem::exists(path));
  }
}

TEST(SafetensorsWriterTest, MissingDirectoryIsAnError) {
  absl::Status status = WriteSafetensors(MakeTempDir() + "/no/such/dir/x.safetensors", EveryDtype());
  EXPECT_FALSE(status.ok());
  EXPECT_THAT(std::string(status.message()), HasSubstr("x.safetensors"));
}

TEST(MakeTensorFromF32Test, EncodesF32AndBf16) {
  const std::vector<float> values = {1.0f, -2.5f, 1.0f + std::ldexp(1.0f, -8), 1.0f + 3 * std::ldexp(1.0f, -8)};
  auto f32 = MakeTensorFromF32("a", {2, 2}, values, StDType::kF32);
  ASSERT_TRUE(f32.ok()) << f32.status();
  EXPECT_EQ(f32->bytes, Bytes<float>({values[0], values[1], values[2], values[3]}));
  EXPECT_THAT(f32->shape, ElementsAre(2, 2));

  auto bf16 = MakeTensorFromF32("b", {4}, values, StDType::kBF16);
  ASSERT_TRUE(bf16.ok()) << bf16.status();
  // Ties round to even: 1 + 2^-8 -> 0x3F80, 1 + 3 * 2^-8 -> 0x3F82.
  EXPECT_EQ(bf16->bytes, Bytes<uint16_t>({0x3F80, 0xC020, 0x3F80, 0x3F82}));
  EXPECT_EQ(bf16->dtype, StDType::kBF16);
}

TEST(MakeTensorFromF32Test, RejectsCountMismatchAndOtherDtypes) {
  const std::vector<float> values = {1.0f, 2.0f, 3.0f};
  EXPECT_EQ(MakeTensorFromF32("a", {2, 2}, values, StDType::kF32).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MakeTensorFromF32("a", {-3}, values, StDType::kF32).status().code(),
            absl::StatusCode::kInvalidArgument);
  auto i32 = MakeTensorFromF32("a", {3}, values, StDType::kI32);
  EXPECT_EQ(i32.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(i32.status().message()), HasSubstr("I32"));
}

}  // namespace
}  // namespace indexcache
