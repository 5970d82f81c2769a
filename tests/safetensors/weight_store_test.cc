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

}  // namespace
}  // namespace indexcache
