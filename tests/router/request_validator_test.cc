// The router's front door on its own: proto sampling fields and a model without a tokenizer.
#include "services/router/request_validator.h"
#include "services/common/sampling_from_proto.h"

#include <filesystem>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace indexcache {
namespace {

using ::testing::HasSubstr;

const std::string kModelDir = std::string(INDEXCACHE_MODELS_DIR) + "/glm-dsa-tiny-random";

TEST(RequestValidatorTest, UnsetSamplingFieldsKeepTheDefaultsAndSetZerosAreKept) {
  // Unset: the documented defaults of generate.proto (temperature 1, top_p 1, 128 new tokens, …).
  const SamplingParams defaults = SamplingParamsFromProto(v1::SamplingParameters());
  EXPECT_EQ(defaults.temperature, 1.0f);
  EXPECT_EQ(defaults.top_k, 0);
  EXPECT_EQ(defaults.top_p, 1.0f);
  EXPECT_EQ(defaults.min_p, 0.0f);
  EXPECT_FALSE(defaults.seed.has_value());
  EXPECT_EQ(defaults.max_new_tokens, 128);
  EXPECT_FALSE(defaults.ignore_eos);

  // An explicit 0 temperature means greedy, not "unset".
  v1::SamplingParameters proto;
  proto.set_temperature(0.0f);
  proto.set_top_k(5);
  proto.set_top_p(0.5f);
  proto.set_min_p(0.1f);
  proto.set_seed(0);
  proto.set_max_new_tokens(7);
  proto.set_ignore_eos(true);
  proto.add_stop("\n\n");
  proto.add_stop_token_ids(3);
  const SamplingParams set = SamplingParamsFromProto(proto);
  EXPECT_EQ(set.temperature, 0.0f);
  EXPECT_EQ(set.top_k, 5);
  EXPECT_EQ(set.top_p, 0.5f);
  EXPECT_EQ(set.min_p, 0.1f);
  ASSERT_TRUE(set.seed.has_value());
  EXPECT_EQ(*set.seed, 0u);
  EXPECT_EQ(set.max_new_tokens, 7);
  EXPECT_TRUE(set.ignore_eos);
  EXPECT_EQ(set.stop_strings, std::vector<std::string>{"\n\n"});
  EXPECT_EQ(set.stop_token_ids, std::vector<int32_t>{3});
}

TEST(RequestValidatorTest, TextNeedsATokenizer) {
  const std::filesystem::path dir = std::filesystem::path(::testing::TempDir()) / "router_no_tokenizer";
  std::filesystem::create_directories(dir);
  std::filesystem::copy_file(kModelDir + "/config.json", dir / "config.json",
                             std::filesystem::copy_options::overwrite_existing);
  auto validator = RequestValidator::Load(dir.string());
  ASSERT_TRUE(validator.ok()) << validator.status();
  EXPECT_FALSE((*validator)->has_tokenizer());

  v1::GenerateRequest text;
  text.set_text("hello");
  const auto refused = (*validator)->Validate(text);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(refused.status().message(), HasSubstr("tokenizer"));

  v1::GenerateRequest ids;
  ids.mutable_token_ids()->add_ids(5);
  ids.mutable_token_ids()->add_ids(6);
  const auto prompt = (*validator)->Validate(ids);
  ASSERT_TRUE(prompt.ok()) << prompt.status();
  EXPECT_EQ(*prompt, (std::vector<int32_t>{5, 6}));
}

// Bounds at the front door: each one at its limit passes, one past it is INVALID_ARGUMENT naming the
// field. The limits are the validator's published constants; the inputs are built to sit on them.
TEST(RequestValidatorTest, LabelsAndStopListsAreBounded) {
  auto validator = RequestValidator::Load(kModelDir);
  ASSERT_TRUE(validator.ok()) << validator.status();
  const auto check = [&](const v1::GenerateRequest& request) { return (*validator)->Validate(request).status(); };
  v1::GenerateRequest base;
  base.mutable_token_ids()->add_ids(5);
  ASSERT_TRUE(check(base).ok());

  v1::GenerateRequest label = base;
  label.set_request_id(std::string(64, 'a'));
  EXPECT_TRUE(check(label).ok());
  label.set_request_id("Job_7.retry:2-x");
  EXPECT_TRUE(check(label).ok());
  for (const std::string& bad : {std::string(65, 'a'), std::string("two\nlines"), std::string("a b"),
                                std::string("quote\""), std::string("tab\t"), std::string("caf\xc3\xa9")}) {
    label.set_request_id(bad);
    const absl::Status status = check(label);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(status.message(), HasSubstr("request_id")) << bad;
  }

  v1::GenerateRequest stops = base;
  for (int i = 0; i < RequestValidator::kMaxStopStrings; ++i) {
    stops.mutable_sampling()->add_stop(std::string(RequestValidator::kMaxStopStringBytes, 'x'));
  }
  EXPECT_TRUE(check(stops).ok());
  v1::GenerateRequest too_many = stops;
  too_many.mutable_sampling()->add_stop("y");
  EXPECT_EQ(check(too_many).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(check(too_many).message(), HasSubstr("stop strings"));
  v1::GenerateRequest too_long = base;
  too_long.mutable_sampling()->add_stop(std::string(RequestValidator::kMaxStopStringBytes + 1, 'x'));
  EXPECT_EQ(check(too_long).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(check(too_long).message(), HasSubstr("stop[0]"));

  v1::GenerateRequest ids = base;
  for (int i = 0; i < RequestValidator::kMaxStopTokenIds; ++i) ids.mutable_sampling()->add_stop_token_ids(3);
  EXPECT_TRUE(check(ids).ok());
  ids.mutable_sampling()->add_stop_token_ids(3);
  EXPECT_EQ(check(ids).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(check(ids).message(), HasSubstr("stop_token_ids"));
}

TEST(RequestValidatorTest, ChoicesAndLogprobsAreBounded) {
  auto validator = RequestValidator::Load(kModelDir);
  ASSERT_TRUE(validator.ok()) << validator.status();
  const auto check = [&](const v1::GenerateRequest& request) { return (*validator)->Validate(request).status(); };
  v1::GenerateRequest base;
  base.mutable_token_ids()->add_ids(5);

  for (int n : {1, 2, RequestValidator::kMaxChoices}) {
    v1::GenerateRequest request = base;
    request.mutable_sampling()->set_n(n);
    EXPECT_TRUE(check(request).ok()) << n;
  }
  for (int n : {0, -1, RequestValidator::kMaxChoices + 1}) {
    v1::GenerateRequest request = base;
    request.mutable_sampling()->set_n(n);
    EXPECT_EQ(check(request).code(), absl::StatusCode::kInvalidArgument) << n;
    EXPECT_THAT(check(request).message(), HasSubstr("n must be in [1, 16]")) << n;
  }

  v1::GenerateRequest logprobs = base;
  logprobs.mutable_sampling()->set_logprobs(true);
  for (int top : {0, 20}) {
    logprobs.mutable_sampling()->set_top_logprobs(top);
    EXPECT_TRUE(check(logprobs).ok()) << top;
  }
  for (int top : {-1, 21}) {
    logprobs.mutable_sampling()->set_top_logprobs(top);
    EXPECT_EQ(check(logprobs).code(), absl::StatusCode::kInvalidArgument) << top;
    EXPECT_THAT(check(logprobs).message(), HasSubstr("top_logprobs must be in [0, 20]")) << top;
  }
  v1::GenerateRequest alternatives_only = base;
  alternatives_only.mutable_sampling()->set_top_logprobs(2);
  EXPECT_EQ(check(alternatives_only).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(check(alternatives_only).message(), HasSubstr("needs logprobs"));

  // The engine sees them as set.
  const SamplingParams params = SamplingParamsFromProto(logprobs.sampling());
  EXPECT_TRUE(params.logprobs);
  EXPECT_EQ(params.top_logprobs, 21);
}

TEST(RequestValidatorTest, AMissingModelDirectoryIsAnError) {
  EXPECT_FALSE(RequestValidator::Load("/nonexistent/model").ok());
}

}  // namespace
}  // namespace indexcache
