#include "common/sampling/sampling_params.h"

#include <cmath>
#include <limits>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace indexcache {
namespace {

using ::testing::HasSubstr;

constexpr int32_t kVocab = 100;

// Expects `params` refused as InvalidArgument with a message that names `field`.
void ExpectRefused(const SamplingParams& params, const std::string& field) {
  const absl::Status status = Validate(params, kVocab);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << field;
  EXPECT_THAT(status.message(), HasSubstr(field));
}

TEST(SamplingParamsTest, DefaultsAreValid) { EXPECT_TRUE(Validate(SamplingParams{}, kVocab).ok()); }

TEST(SamplingParamsTest, AcceptsBoundaryValues) {
  SamplingParams params;
  params.temperature = 0.0f;  // greedy
  params.top_k = 0;
  params.top_p = 1.0f;
  params.min_p = 1.0f;
  params.max_new_tokens = 1;
  params.stop_token_ids = {0, kVocab - 1};
  params.stop_strings = {"x"};
  EXPECT_TRUE(Validate(params, kVocab).ok());
  params.min_p = 0.0f;
  params.top_p = 1e-6f;
  params.top_k = kVocab * 10;  // larger than the vocabulary just keeps everything
  EXPECT_TRUE(Validate(params, kVocab).ok());
}

TEST(SamplingParamsTest, RefusesBadTemperature) {
  const float inf = std::numeric_limits<float>::infinity();
  for (const float t : {-0.5f, -inf, inf, std::nanf("")}) {
    SamplingParams params;
    params.temperature = t;
    ExpectRefused(params, "temperature");
  }
}

TEST(SamplingParamsTest, RefusesNegativeTopK) {
  SamplingParams params;
  params.top_k = -1;
  ExpectRefused(params, "top_k");
}

TEST(SamplingParamsTest, RefusesTopPOutsideOpenClosedUnitInterval) {
  for (const float p : {0.0f, -0.1f, 1.0001f, std::nanf("")}) {
    SamplingParams params;
    params.top_p = p;
    ExpectRefused(params, "top_p");
  }
}

TEST(SamplingParamsTest, RefusesMinPOutsideUnitInterval) {
  for (const float p : {-0.01f, 1.5f, std::nanf("")}) {
    SamplingParams params;
    params.min_p = p;
    ExpectRefused(params, "min_p");
  }
}

TEST(SamplingParamsTest, RefusesMaxNewTokensBelowOne) {
  for (const int32_t n : {0, -3}) {
    SamplingParams params;
    params.max_new_tokens = n;
    ExpectRefused(params, "max_new_tokens");
  }
}

TEST(SamplingParamsTest, RefusesStopTokenIdsOutsideVocabulary) {
  for (const int32_t id : {-1, kVocab, kVocab + 7}) {
    SamplingParams params;
    params.stop_token_ids = {3, id};
    ExpectRefused(params, "stop_token_ids[1]");
  }
}

TEST(SamplingParamsTest, RefusesEmptyStopString) {
  SamplingParams params;
  params.stop_strings = {"END", ""};
  ExpectRefused(params, "stop_strings[1]");
}

TEST(SamplingParamsTest, LogprobsBounds) {
  SamplingParams params;
  params.logprobs = true;
  params.top_logprobs = 20;
  EXPECT_TRUE(Validate(params, kVocab).ok());
  params.top_logprobs = 0;
  EXPECT_TRUE(Validate(params, kVocab).ok());
  params.top_logprobs = 21;
  ExpectRefused(params, "top_logprobs");
  params.top_logprobs = -1;
  ExpectRefused(params, "top_logprobs");
  params.logprobs = false;
  params.top_logprobs = 3;  // alternatives without the token's own logprob: OpenAI refuses it too
  ExpectRefused(params, "top_logprobs");
}

}  // namespace
}  // namespace indexcache
