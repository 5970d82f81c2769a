#include "common/safetensors/weight_store.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "common/safetensors/safetensors_writer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/safetensors/test_files.h"

namespace indexcache {
namespace {

using ::indexcache::testing::MakeTempDir;
using ::indexcache::testing::WriteBytes;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

const std::string kShardedDir = std::string(INDEXCACHE_TEST_DATA) + "/safetensors/sharded";

TensorToWrite F32Tensor(const std::string& name, std::vector<int64_t> shape, std::vector<float> values) {
  auto t = MakeTensorFromF32(name, std::move(shape), values, StDType::kF32);
  EXPECT_TRUE(t.ok()) << t.status();
  return *std::move(t);
}

// The two-shard directory written by tools/make_safetensors_fixture.py.
TEST(WeightStoreTest, ReadsTheShardedNumpyFixture) {
  auto store = WeightStore::Open(kShardedDir);
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_THAT(store->Names(), ElementsAre("model.layers.0.w", "model.layers.1.w", "model.norm.w"));
  EXPECT_FALSE(store->Contains("unlisted"));  // in a shard but not in the index
  EXPECT_TRUE(store->Contains("model.norm.w"));

  auto w0 = store->ReadF32("model.layers.0.w", {2, 2});
  ASSERT_TRUE(w0.ok()) << w0.status();
  EXPECT_THAT(*w0, ElementsAre(1.0f, 2.0f, 3.0f, 4.0f));
  auto w1 = store->ReadF32("model.layers.1.w", {3});  // BF16
  ASSERT_TRUE(w1.ok()) << w1.status();
  EXPECT_THAT(*w1, ElementsAre(0.5f, -1.0f, 256.0f));
  auto norm = store->ReadF32("model.norm.w", {2});  // F16
  ASSERT_TRUE(norm.ok()) << norm.status();
  EXPECT_THAT(*norm, ElementsAre(0.125f, -4.0f));

  auto view = store->Get("model.layers.1.w");
  ASSERT_TRUE(view.ok());
  EXPECT_EQ((*view)->dtype, StDType::kBF16);
  EXPECT_THAT((*view)->shape, ElementsAre(3));
}

TEST(WeightStoreTest, SingleFileAndItsErrors) {
  const std::string dir = MakeTempDir();
  ASSERT_TRUE(WriteSafetensors(dir + "/model.safetensors",
                               {F32Tensor("w", {2, 3}, {1, 2, 3, 4, 5, 6}),
                                {"ids", StDType::kI32, {1}, std::vector<std::byte>(4)}})
                  .ok());
  auto opened = WeightStore::Open(dir);
  ASSERT_TRUE(opened.ok()) << opened.status();
  const WeightStore store = *std::move(opened);  // views must survive moving the store
  EXPECT_THAT(store.Names(), ElementsAre("ids", "w"));
  EXPECT_EQ(store.model_dir(), dir);

  auto w = store.ReadF32("w", {2, 3});
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_THAT(*w, ElementsAre(1, 2, 3, 4, 5, 6));

  auto wrong_shape = store.ReadF32("w", {3, 2});
  EXPECT_EQ(wrong_shape.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(wrong_shape.status().message(), "tensor \"w\" has shape [2, 3], expected [3, 2]");
  EXPECT_EQ(store.ReadF32("w", {6}).status().code(), absl::StatusCode::kInvalidArgument);

  auto ints = store.ReadF32("ids", {1});
  EXPECT_EQ(ints.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(ints.status().message()), HasSubstr("I32"));
  EXPECT_THAT(std::string(ints.status().message()), HasSubstr("\"ids\""));

  auto missing = store.Get("model.embed_tokens.weight");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr("model.embed_tokens.weight"));
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr(dir));
  EXPECT_EQ(store.ReadF32("missing", {1}).status().code(), absl::StatusCode::kNotFound);
}

TEST(WeightStoreTest, SingleFileWinsOverIndex) {
  const std::string dir = MakeTempDir();
  ASSERT_TRUE(WriteSafetensors(dir + "/model.safetensors", {F32Tensor("single", {1}, {1})}).ok());
  WriteBytes(dir + "/model.safetensors.index.json", R"({"weight_map": {"x": "missing.safetensors"}})");
  auto store = WeightStore::Open(dir);
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_THAT(store->Names(), ElementsAre("single"));
}

TEST(WeightStoreTest, EmptyDirectoryIsNotFound) {
  const std::string dir = MakeTempDir();
  auto store = WeightStore::Open(dir);
  EXPECT_EQ(store.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(store.status().message()), HasSubstr(dir));
  EXPECT_THAT(std::string(store.status().message()), HasSubstr("model.safetensors.index.json"));
  EXPECT_EQ(WeightStore::Open(dir + "/does_not_exist").status().code(), absl::StatusCode::kNotFound);
}

TEST(WeightStoreTest, CorruptSingleFileNamesIt) {
  const std::string dir = MakeTempDir();
  WriteBytes(dir + "/model.safetensors", "short");
  auto store = WeightStore::Open(dir);
  EXPECT_EQ(store.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(store.status().message()), HasSubstr("model.safetensors"));
}

// Writes `index` in a directory that holds one valid shard "s1.safetensors" with tensor "a",
// and expects Open to fail with `code` and every one of `fragments` in the message.
void ExpectIndexError(const std::string& index, absl::StatusCode code, std::vector<std::string> fragments) {
  const std::string dir = MakeTempDir();
  ASSERT_TRUE(WriteSafetensors(dir + "/s1.safetensors", {F32Tensor("a", {1}, {1})}).ok());
  WriteBytes(dir + "/model.safetensors.index.json", index);
  auto store = WeightStore::Open(dir);
  ASSERT_FALSE(store.ok()) << index;
  EXPECT_EQ(store.status().code(), code) << store.status();
  EXPECT_THAT(std::string(store.status().message()), HasSubstr("model.safetensors.index.json"));
  for (const std::string& f : fragments) EXPECT_THAT(std::string(store.status().message()), HasSubstr(f));
}

TEST(WeightStoreTest, IndexErrors) {
  const absl::StatusCode kInvalid = absl::StatusCode::kInvalidArgument;
  ExpectIndexError("{\"weight_map\": ", kInvalid, {"not valid JSON"});
  ExpectIndexError("[]", kInvalid, {"weight_map"});
  ExpectIndexError(R"({"metadata": {}})", kInvalid, {"weight_map"});
  ExpectIndexError(R"({"weight_map": ["s1.safetensors"]})", kInvalid, {"weight_map"});
  ExpectIndexError(R"({"weight_map": {"a": 1}})", kInvalid, {"weight_map[\"a\"]"});
  ExpectIndexError(R"({"weight_map": {"a": "s1.safetensors", "b": "s2.safetensors"}})",
                   absl::StatusCode::kNotFound, {"s2.safetensors"});
  ExpectIndexError(R"({"weight_map": {"a": "s1.safetensors", "b": "s1.safetensors"}})", kInvalid,
                   {"\"b\"", "s1.safetensors", "does not contain"});
  ExpectIndexError(R"({"weight_map": {"a": "../s1.safetensors"}})", kInvalid, {"escapes"});
  ExpectIndexError(R"({"weight_map": {"a": "sub/../../s1.safetensors"}})", kInvalid, {"escapes"});
  ExpectIndexError(R"({"weight_map": {"a": "/etc/passwd"}})", kInvalid, {"must be relative"});
  ExpectIndexError(R"({"weight_map": {"a": ""}})", kInvalid, {"must be relative"});
}

TEST(WeightStoreTest, CorruptShardIsNamed) {
  const std::string dir = MakeTempDir();
  WriteBytes(dir + "/s1.safetensors", std::string("\x04\0\0\0\0\0\0\0[1] ", 12));
  WriteBytes(dir + "/model.safetensors.index.json", R"({"weight_map": {"a": "s1.safetensors"}})");
  auto store = WeightStore::Open(dir);
  EXPECT_EQ(store.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(store.status().message()), HasSubstr("shard \"s1.safetensors\""));
  EXPECT_THAT(std::string(store.status().message()), HasSubstr("not a JSON object"));
}

TEST(WeightStoreTest, ShardsInSubdirectoriesAndSharedShards) {
  const std::string dir = MakeTempDir();
  std::filesystem::create_directories(dir + "/sub");
  ASSERT_TRUE(WriteSafetensors(dir + "/sub/s1.safetensors",
                               {F32Tensor("a", {1}, {1}), F32Tensor("b", {2}, {2, 3})})
                  .ok());
  WriteBytes(dir + "/model.safetensors.index.json",
             R"({"weight_map": {"a": "sub/s1.safetensors", "b": "sub/./s1.safetensors"}})");
  auto store = WeightStore::Open(dir);
  ASSERT_TRUE(store.ok()) << store.status();
  auto b = store->ReadF32("b", {2});
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_THAT(*b, ElementsAre(2, 3));
  // Both spellings opened one mapping: "b" follows "a"'s 4 bytes in the same data section.
  EXPECT_EQ((*store->Get("b"))->data - (*store->Get("a"))->data, 4);
}

// An F8_E4M3 tensor of `shape` whose codes cycle through 0x01…0x7E with alternating signs (no NaN).
TensorToWrite Fp8Tensor(const std::string& name, std::vector<int64_t> shape, std::vector<uint8_t>* codes) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  codes->clear();
  std::vector<std::byte> bytes;
  for (int64_t i = 0; i < n; ++i) {
    const uint8_t code = static_cast<uint8_t>((1 + (i * 29) % 126) | (i % 2 == 1 ? 0x80 : 0));
    codes->push_back(code);
    bytes.push_back(static_cast<std::byte>(code));
  }
  return {name, StDType::kF8E4M3, std::move(shape), std::move(bytes)};
}

// FP8 checkpoints: each code times the scale of its [rows, cols] block over the last two dimensions,
// leading dimensions (experts) each with their own scales; blocks at the edges are partial.
TEST(WeightStoreTest, Fp8TensorsAreDequantizedByTheirBlockScales) {
  const std::string dir = MakeTempDir();
  std::vector<uint8_t> codes2, codes3, codes_tensor;
  // [3, 5] in 2x2 blocks: 2 x 3 scales. [2, 3, 4] (2 experts) in 2x2 blocks: 2 x 2 x 2 scales.
  const std::vector<float> scales2 = {0.5f, 2.0f, 3.0f, -1.0f, 0.25f, 8.0f};
  const std::vector<float> scales3 = {1.0f, 2.0f, 4.0f, 8.0f, 0.5f, 0.25f, 16.0f, 32.0f};
  ASSERT_TRUE(WriteSafetensors(dir + "/model.safetensors",
                               {Fp8Tensor("a.weight", {3, 5}, &codes2), F32Tensor("a.weight_scale_inv", {2, 3}, scales2),
                                Fp8Tensor("experts.gate_up_proj", {2, 3, 4}, &codes3),
                                F32Tensor("experts.gate_up_proj_scale_inv", {2, 2, 2}, scales3),
                                Fp8Tensor("b.weight", {2, 2}, &codes_tensor), F32Tensor("b.weight_scale_inv", {1}, {3.0f}),
                                Fp8Tensor("c.weight", {2, 2}, &codes_tensor),
                                Fp8Tensor("d.weight", {3, 5}, &codes2), F32Tensor("d.weight_scale_inv", {3, 2}, scales2)})
                  .ok());
  auto opened = WeightStore::Open(dir);
  ASSERT_TRUE(opened.ok()) << opened.status();
  WeightStore store = *std::move(opened);

  // Without the config's block size an FP8 tensor is refused, not read as raw codes.
  absl::StatusOr<std::vector<float>> unset = store.ReadF32("a.weight", {3, 5});
  EXPECT_EQ(unset.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(unset.status().message()), HasSubstr("quantization_config"));

  store.SetFp8WeightBlock(2, 2);
  absl::StatusOr<std::vector<float>> a = store.ReadF32("a.weight", {3, 5});
  ASSERT_TRUE(a.ok()) << a.status();
  for (int64_t r = 0; r < 3; ++r) {
    for (int64_t c = 0; c < 5; ++c) {
      EXPECT_EQ((*a)[r * 5 + c], F8E4M3ToF32(codes2[r * 5 + c]) * scales2[(r / 2) * 3 + c / 2]) << r << "," << c;
    }
  }
  absl::StatusOr<std::vector<float>> experts = store.ReadF32("experts.gate_up_proj", {2, 3, 4});
  ASSERT_TRUE(experts.ok()) << experts.status();
  for (int64_t e = 0; e < 2; ++e) {
    for (int64_t r = 0; r < 3; ++r) {
      for (int64_t c = 0; c < 4; ++c) {
        const int64_t i = (e * 3 + r) * 4 + c;
        EXPECT_EQ((*experts)[i], F8E4M3ToF32(codes3[i]) * scales3[(e * 2 + r / 2) * 2 + c / 2]) << e << "," << r << "," << c;
      }
    }
  }
  absl::StatusOr<std::vector<float>> per_tensor = store.ReadF32("b.weight", {2, 2});
  ASSERT_TRUE(per_tensor.ok()) << per_tensor.status();
  for (size_t i = 0; i < 4; ++i) EXPECT_EQ((*per_tensor)[i], F8E4M3ToF32(codes_tensor[i]) * 3.0f);

  absl::StatusOr<std::vector<float>> no_scales = store.ReadF32("c.weight", {2, 2});
  EXPECT_EQ(no_scales.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(no_scales.status().message()), HasSubstr("\"c.weight_scale_inv\""));
  absl::StatusOr<std::vector<float>> wrong = store.ReadF32("d.weight", {3, 5});
  EXPECT_EQ(wrong.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(wrong.status().message()), HasSubstr("expected [2, 3]"));
}

}  // namespace
}  // namespace indexcache
