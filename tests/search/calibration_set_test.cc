// Calibration windows: the cut matches `indexcache perplexity`'s (consecutive windows of `context`
// tokens, a 1-token remainder dropped), .jsonl documents are cut one by one, text goes through the
// model's tokenizer, and every bad file is refused with a message naming it.
#include "common/search/calibration_set.h"

#include <filesystem>
#include <fstream>
#include <numeric>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace indexcache {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

const std::string kBundled = std::string(INDEXCACHE_MODELS_DIR) + "/glm-dsa-tiny-random";

std::vector<int32_t> Iota(int32_t begin, int32_t end) {
  std::vector<int32_t> ids(end - begin);
  std::iota(ids.begin(), ids.end(), begin);
  return ids;
}

class CalibrationFileTest : public testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("ic_calibration_" + std::to_string(::getpid()));
    fs::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ignored;
    fs::remove_all(dir_, ignored);
  }
  std::string Write(const std::string& name, const std::string& content) {
    const std::string path = (dir_ / name).string();
    std::ofstream(path, std::ios::binary) << content;
    return path;
  }
  fs::path dir_;
};

TEST(AppendWindows, CutsConsecutiveWindowsAndDropsALoneLastToken) {
  CalibrationSet set;
  AppendWindows(Iota(0, 10), 4, set);  // 4 + 4 + 2
  ASSERT_EQ(set.windows.size(), 3u);
  EXPECT_EQ(set.windows[0], Iota(0, 4));
  EXPECT_EQ(set.windows[1], Iota(4, 8));
  EXPECT_EQ(set.windows[2], Iota(8, 10));
  EXPECT_EQ(set.predicted_tokens(), 3 + 3 + 1);
  EXPECT_EQ(set.longest_window(), 4);

  CalibrationSet lone;
  AppendWindows(Iota(0, 9), 4, lone);  // 4 + 4 + 1: the last token predicts nothing and has no target
  ASSERT_EQ(lone.windows.size(), 2u);
  EXPECT_EQ(lone.windows[1], Iota(4, 8));

  CalibrationSet tiny;
  AppendWindows({7}, 4, tiny);
  EXPECT_TRUE(tiny.windows.empty());
}

TEST_F(CalibrationFileTest, JsonlLinesAreDocumentsCutSeparately) {
  const std::string path = Write("cal.jsonl", "[0, 1, 2, 3, 4]\n\n  \n[10, 11, 12]\r\n[5]\n");
  auto set = LoadCalibrationSet(path, 3, nullptr, 64);
  ASSERT_TRUE(set.ok()) << set.status();
  const std::vector<std::vector<int32_t>> want = {{0, 1, 2}, {3, 4}, {10, 11, 12}};
  EXPECT_EQ(set->windows, want);
}

TEST_F(CalibrationFileTest, TextIsTokenizedWithTheModelsTokenizer) {
  auto tokenizer = BpeTokenizer::FromFile(kBundled + "/tokenizer.json");
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  const std::string text = "It was the best of times, it was the worst of times, it was the age of wisdom.";
  const std::vector<int32_t> ids = (*tokenizer)->Encode(text);
  ASSERT_GT(ids.size(), 8u);
  auto set = LoadCalibrationSet(Write("cal.txt", text), 5, tokenizer->get(), 2048);
  ASSERT_TRUE(set.ok()) << set.status();
  std::vector<int32_t> joined;
  for (const auto& w : set->windows) {
    EXPECT_LE(w.size(), 5u);
    joined.insert(joined.end(), w.begin(), w.end());
  }
  const size_t kept = ids.size() % 5 == 1 ? ids.size() - 1 : ids.size();
  EXPECT_EQ(joined, std::vector<int32_t>(ids.begin(), ids.begin() + kept));
}

TEST_F(CalibrationFileTest, BadFilesAreRefusedWithTheirName) {
  struct Case {
    std::string path;
    absl::StatusCode code;
    std::string says;
  };
  const std::vector<Case> cases = {
      {(dir_ / "missing.txt").string(), absl::StatusCode::kNotFound, "missing.txt"},
      {Write("empty.jsonl", ""), absl::StatusCode::kInvalidArgument, "nothing to score"},
      {Write("short.jsonl", "[1]\n[2]\n"), absl::StatusCode::kInvalidArgument, "nothing to score"},
      {Write("object.jsonl", "[1, 2]\n{\"ids\": [1]}\n"), absl::StatusCode::kInvalidArgument, "object.jsonl:2"},
      {Write("broken.jsonl", "[1, 2,\n"), absl::StatusCode::kInvalidArgument, "broken.jsonl:1"},
      {Write("vocab.jsonl", "[1, 64]\n"), absl::StatusCode::kInvalidArgument, "64 is not a token id"},
      {Write("negative.jsonl", "[1, -3]\n"), absl::StatusCode::kInvalidArgument, "-3 is not a token id"},
      {Write("float.jsonl", "[1, 2.5]\n"), absl::StatusCode::kInvalidArgument, "2.5 is not a token id"},
      {Write("text.txt", "some words"), absl::StatusCode::kFailedPrecondition, "tokenizer"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.path);
    auto set = LoadCalibrationSet(c.path, 4, nullptr, 64);
    ASSERT_FALSE(set.ok());
    EXPECT_EQ(set.status().code(), c.code) << set.status();
    EXPECT_THAT(std::string(set.status().message()), HasSubstr(c.says));
  }
  auto small_context = LoadCalibrationSet(Write("ok.jsonl", "[1, 2, 3]\n"), 1, nullptr, 64);
  ASSERT_FALSE(small_context.ok());
  EXPECT_THAT(std::string(small_context.status().message()), HasSubstr("at least 2"));
}

}  // namespace
}  // namespace indexcache
