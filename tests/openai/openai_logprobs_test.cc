// The two OpenAI logprobs shapes (openai_logprobs.h) from router TokenLogprobs, with the bundled
// model's tokenizer (token strings and bytes) and without one (vLLM's "token_id:N").
#include "services/openai/openai_logprobs.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

namespace indexcache::openai {
namespace {

using nlohmann::json;

const std::string kModelDir = std::string(INDEXCACHE_MODELS_DIR) + "/glm-dsa-tiny-random";

TokenLogprobsList Tokens() {
  TokenLogprobsList tokens;
  v1::TokenLogprobs* first = tokens.Add();
  first->set_token_id(7);
  first->set_logprob(-0.5f);
  v1::Logprob* top = first->add_top_logprobs();
  top->set_token_id(9);
  top->set_logprob(-0.25f);
  v1::TokenLogprobs* second = tokens.Add();
  second->set_token_id(11);
  second->set_logprob(-std::numeric_limits<float>::infinity());
  return tokens;
}

TEST(OpenAiLogprobsTest, CompletionsShapeWithoutATokenizer) {
  const LogprobsFormatter formatter(nullptr);
  int64_t next = 0;
  const json out = formatter.Completions(Tokens(), 100, &next);
  EXPECT_EQ(out["tokens"], json({"token_id:7", "token_id:11"}));
  EXPECT_EQ(out["token_logprobs"], json({-0.5, -9999.0}));  // -inf as vLLM writes it
  // The N alternatives and, as OpenAI's API lists it, the chosen token.
  EXPECT_EQ(out["top_logprobs"][0], json({{"token_id:9", -0.25}, {"token_id:7", -0.5}}));
  EXPECT_EQ(out["top_logprobs"][1], json({{"token_id:11", -9999.0}}));
  EXPECT_EQ(out["text_offset"], json({100, 100 + 10}));  // "token_id:7" is 10 bytes
  EXPECT_EQ(next, 100 + 10 + 11);
}

TEST(OpenAiLogprobsTest, ChatShapeWithTheModelsTokenizer) {
  absl::StatusOr<std::unique_ptr<BpeTokenizer>> tokenizer = BpeTokenizer::FromFile(kModelDir + "/tokenizer.json");
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  const LogprobsFormatter formatter(tokenizer->get());
  const json out = formatter.Chat(Tokens());
  ASSERT_EQ(out["content"].size(), 2u);
  const json& first = out["content"][0];
  const int32_t seven[] = {7};
  const std::string text = *(*tokenizer)->Decode(seven);
  EXPECT_EQ(first["token"], text);
  json bytes = json::array();
  for (unsigned char c : text) bytes.push_back(static_cast<int>(c));
  EXPECT_EQ(first["bytes"], bytes);
  EXPECT_EQ(first["logprob"], -0.5);
  ASSERT_EQ(first["top_logprobs"].size(), 1u);
  EXPECT_EQ(first["top_logprobs"][0]["logprob"], -0.25);
  EXPECT_TRUE(first["top_logprobs"][0].contains("bytes"));
  EXPECT_TRUE(out["content"][1]["top_logprobs"].empty());
}

}  // namespace
}  // namespace indexcache::openai
