// Compares the tokenizer with Hugging Face `tokenizers` on golden files written by it:
//   {"tokenizer": "<tokenizer.json path, relative to the repo root>",
//    "cases": [{"text": "...", "ids": [...], "decoded": "..." (optional)}, ...]}
// Encode(text) must equal ids, and Decode(ids) must equal "decoded" when present (HF keeps e.g.
// the space ByteLevel's add_prefix_space added), else text.
//  - tests/data/tokenizer_golden.json: made by the lead on a machine with HF tokenizers (skipped
//    until it exists).
//  - tests/data/tokenizer_golden_trained.json: the trained default model's tokenizer (make_goldens.py).
//  - tests/tokenizer/testdata/*_golden.json: made by testdata/make_hf_golden.py (GLM / Llama-3
//    layout, GPT-2 layout with add_prefix_space, Split behaviours).
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "common/tokenizer/bpe_tokenizer.h"

namespace indexcache {
namespace {

using json = nlohmann::json;

const std::string kRepoRoot = std::string(INDEXCACHE_TEST_DATA) + "/../..";

void CheckGoldenFile(const std::string& golden_path) {
  std::ifstream file(golden_path);
  ASSERT_TRUE(file) << golden_path;
  std::stringstream contents;
  contents << file.rdbuf();
  const json golden = json::parse(contents.str());
  const std::string tokenizer_path = kRepoRoot + "/" + golden.at("tokenizer").get<std::string>();
  absl::StatusOr<std::unique_ptr<BpeTokenizer>> tok = BpeTokenizer::FromFile(tokenizer_path);
  ASSERT_TRUE(tok.ok()) << tok.status();
  ASSERT_FALSE(golden.at("cases").empty());
  for (const json& c : golden.at("cases")) {
    const std::string text = c.at("text").get<std::string>();
    const std::vector<int32_t> ids = c.at("ids").get<std::vector<int32_t>>();
    EXPECT_EQ((*tok)->Encode(text), ids) << "text: " << json(text).dump();
    absl::StatusOr<std::string> decoded = (*tok)->Decode(ids);
    ASSERT_TRUE(decoded.ok()) << decoded.status();
    EXPECT_EQ(*decoded, c.value("decoded", text)) << "text: " << json(text).dump();
  }
}

TEST(TokenizerGoldenTest, LeadGoldenFile) {
  const std::string path = std::string(INDEXCACHE_TEST_DATA) + "/tokenizer_golden.json";
  if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " not there yet";
  CheckGoldenFile(path);
}

// The trained default model's tokenizer (models/glm-dsa-trained), encoded by HF tokenizers in
// tools/make_goldens.py.
TEST(TokenizerGoldenTest, TrainedModelGoldenFile) {
  CheckGoldenFile(std::string(INDEXCACHE_TEST_DATA) + "/tokenizer_golden_trained.json");
}

class FixtureGoldenTest : public ::testing::TestWithParam<std::string> {};

TEST_P(FixtureGoldenTest, MatchesHuggingFace) {
  CheckGoldenFile(kRepoRoot + "/tests/tokenizer/testdata/" + GetParam() + "_golden.json");
}

INSTANTIATE_TEST_SUITE_P(Layouts, FixtureGoldenTest,
                         ::testing::Values("glm_style", "gpt2_style", "splits"));

}  // namespace
}  // namespace indexcache
