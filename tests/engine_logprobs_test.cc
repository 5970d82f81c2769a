// Logprobs from the engine (SamplingParams::logprobs) against an independent truth: the float64
// reference forward pass (tests/reference/naive_dsa.h) over prompt + generated tokens, whose logits
// row before each generated token gives that token's log-softmax, computed here in double. Also: asking
// for logprobs leaves the tokens unchanged (greedy and seeded sampling), sampled tokens report the raw
// distribution's logprob (before temperature and top-k), the prefill-only path carries the first
// token's logprobs, and the decode side refuses to start without them.
#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "common/engine/engine.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/reference/naive_dsa.h"

namespace indexcache {
namespace {

const std::string kModel = std::string(INDEXCACHE_MODELS_DIR) + "/glm-dsa-tiny-random";
// The engine's float32 logits are within 1e-4 of the reference's relative to the row's largest
// |logit| (invariants_test); a log-softmax moves by at most twice a logit's error.
constexpr double kLogprobTolerance = 2e-3;

std::unique_ptr<Engine> MakeEngine() {
  EngineOptions options;
  options.model_dir = kModel;
  options.block_size = 16;
  options.kv_cache_bytes = size_t{32} << 20;
  absl::StatusOr<std::unique_ptr<Engine>> engine = Engine::Create(options);
  EXPECT_TRUE(engine.ok()) << engine.status();
  return engine.ok() ? *std::move(engine) : nullptr;
}

struct Generated {
  std::vector<int32_t> tokens;
  std::vector<std::optional<TokenLogprobs>> logprobs;  // one per token
};

Generated RunRequest(Engine& engine, const std::vector<int32_t>& prompt, const SamplingParams& params) {
  absl::StatusOr<RequestId> id = engine.Submit(prompt, params);
  EXPECT_TRUE(id.ok()) << id.status();
  Generated out;
  for (int steps = 0; id.ok() && engine.HasWork() && steps < 1000; ++steps) {
    absl::StatusOr<std::vector<TokenEvent>> events = engine.Step();
    EXPECT_TRUE(events.ok()) << events.status();
    if (!events.ok()) break;
    for (const TokenEvent& e : *events) {
      EXPECT_NE(e.finish, RequestFinish::kError) << e.error;
      if (e.token < 0) continue;
      out.tokens.push_back(e.token);
      out.logprobs.push_back(e.logprobs);
    }
  }
  return out;
}

// The reference's log-softmax of every row of prompt + tokens[:-1], in double.
class Reference {
 public:
  Reference(const std::vector<int32_t>& prompt, const std::vector<int32_t>& tokens) : prompt_len_(prompt.size()) {
    absl::StatusOr<reference::NaiveDsa> model = reference::NaiveDsa::Load(kModel);
    EXPECT_TRUE(model.ok()) << model.status();
    std::vector<int32_t> ids = prompt;
    ids.insert(ids.end(), tokens.begin(), tokens.end() - 1);
    absl::StatusOr<reference::NaiveDsaResult> result = model->Forward(ids);
    EXPECT_TRUE(result.ok()) << result.status();
    result_ = *std::move(result);
    EXPECT_EQ(result_.first_near_tie_row(), result_.seq_len) << "a selection near-tie: pick another prompt";
  }

  // log p(token | prefix) for generated token `i`.
  std::vector<double> LogSoftmax(size_t i) const {
    const double* row = result_.row(static_cast<int32_t>(prompt_len_ + i - 1));
    const double max = *std::max_element(row, row + result_.vocab_size);
    double sum = 0;
    for (int32_t v = 0; v < result_.vocab_size; ++v) sum += std::exp(row[v] - max);
    std::vector<double> out(result_.vocab_size);
    for (int32_t v = 0; v < result_.vocab_size; ++v) out[v] = row[v] - max - std::log(sum);
    return out;
  }

 private:
  size_t prompt_len_;
  reference::NaiveDsaResult result_;
};

// `got` against the reference's distribution `want`: the chosen token's logprob, and the top entries
// are the most likely tokens in order (compared by value, so that a near-tie may swap two ids).
void ExpectMatches(const TokenLogprobs& got, int32_t token, const std::vector<double>& want, int32_t top_n) {
  EXPECT_EQ(got.chosen.token, token);
  EXPECT_NEAR(got.chosen.logprob, want[token], kLogprobTolerance);
  std::vector<double> sorted = want;
  std::sort(sorted.begin(), sorted.end(), std::greater<>());
  ASSERT_EQ(got.top.size(), static_cast<size_t>(top_n));
  for (int32_t k = 0; k < top_n; ++k) {
    EXPECT_NEAR(got.top[k].logprob, sorted[k], kLogprobTolerance) << "rank " << k;
    EXPECT_NEAR(got.top[k].logprob, want[got.top[k].token], kLogprobTolerance) << "rank " << k;
  }
}

const std::vector<int32_t> kPrompt = {5, 17, 200, 31, 99, 8, 41, 64, 3, 120, 77, 15};

TEST(EngineLogprobsTest, GreedyLogprobsMatchTheReferenceAndLeaveTokensUnchanged) {
  std::unique_ptr<Engine> engine = MakeEngine();
  ASSERT_NE(engine, nullptr);
  SamplingParams params;
  params.temperature = 0.0f;
  params.max_new_tokens = 6;
  params.ignore_eos = true;
  const Generated plain = RunRequest(*engine, kPrompt, params);
  params.logprobs = true;
  params.top_logprobs = 5;
  const Generated with = RunRequest(*engine, kPrompt, params);
  ASSERT_EQ(with.tokens, plain.tokens);
  ASSERT_EQ(with.tokens.size(), 6u);
  for (const std::optional<TokenLogprobs>& l : plain.logprobs) EXPECT_FALSE(l.has_value());
  const Reference reference(kPrompt, with.tokens);
  for (size_t i = 0; i < with.tokens.size(); ++i) {
    SCOPED_TRACE(testing::Message() << "token " << i);
    ASSERT_TRUE(with.logprobs[i].has_value());
    const std::vector<double> want = reference.LogSoftmax(i);
    ExpectMatches(*with.logprobs[i], with.tokens[i], want, 5);
    // Greedy: the chosen token is the most likely one.
    EXPECT_EQ(with.logprobs[i]->top[0].token, with.tokens[i]);
  }
}

TEST(EngineLogprobsTest, SampledTokensReportTheRawDistribution) {
  std::unique_ptr<Engine> engine = MakeEngine();
  ASSERT_NE(engine, nullptr);
  SamplingParams params;
  params.temperature = 0.5f;  // logprobs are before temperature and top-k (vLLM's raw logprobs)
  params.top_k = 4;
  params.seed = 1234;
  params.max_new_tokens = 5;
  params.ignore_eos = true;
  const Generated plain = RunRequest(*engine, kPrompt, params);
  params.logprobs = true;
  params.top_logprobs = 2;
  const Generated with = RunRequest(*engine, kPrompt, params);
  ASSERT_EQ(with.tokens, plain.tokens);
  const Reference reference(kPrompt, with.tokens);
  for (size_t i = 0; i < with.tokens.size(); ++i) {
    SCOPED_TRACE(testing::Message() << "token " << i);
    ASSERT_TRUE(with.logprobs[i].has_value());
    ExpectMatches(*with.logprobs[i], with.tokens[i], reference.LogSoftmax(i), 2);
  }
}

TEST(EngineLogprobsTest, OnlyAskingRequestsCarryLogprobsInABatch) {
  std::unique_ptr<Engine> engine = MakeEngine();
  ASSERT_NE(engine, nullptr);
  SamplingParams asks;
  asks.temperature = 0.0f;
  asks.max_new_tokens = 4;
  asks.ignore_eos = true;
  asks.logprobs = true;
  SamplingParams silent = asks;
  silent.logprobs = false;
  silent.temperature = 0.8f;  // a sampled row beside a greedy one: the batch is not argmax-only
  silent.seed = 5;
  absl::StatusOr<RequestId> a = engine->Submit(kPrompt, asks);
  absl::StatusOr<RequestId> b = engine->Submit({9, 8, 7, 6, 5}, silent);
  ASSERT_TRUE(a.ok() && b.ok());
  std::map<RequestId, Generated> out;
  while (engine->HasWork()) {
    absl::StatusOr<std::vector<TokenEvent>> events = engine->Step();
    ASSERT_TRUE(events.ok()) << events.status();
    for (const TokenEvent& e : *events) {
      if (e.token < 0) continue;
      out[e.request].tokens.push_back(e.token);
      out[e.request].logprobs.push_back(e.logprobs);
    }
  }
  const Reference reference(kPrompt, out[*a].tokens);
  for (size_t i = 0; i < out[*a].tokens.size(); ++i) {
    ASSERT_TRUE(out[*a].logprobs[i].has_value());
    EXPECT_TRUE(out[*a].logprobs[i]->top.empty());
    EXPECT_NEAR(out[*a].logprobs[i]->chosen.logprob, reference.LogSoftmax(i)[out[*a].tokens[i]], kLogprobTolerance);
  }
  for (const std::optional<TokenLogprobs>& l : out[*b].logprobs) EXPECT_FALSE(l.has_value());
}

TEST(EngineLogprobsTest, PrefillCarriesTheFirstTokensLogprobsAndDecodeNeedsThem) {
  std::unique_ptr<Engine> prefill = MakeEngine();
  ASSERT_NE(prefill, nullptr);
  SamplingParams params;
  params.temperature = 0.0f;
  params.max_new_tokens = 4;
  params.logprobs = true;
  params.top_logprobs = 3;
  absl::StatusOr<RequestId> id = prefill->SubmitPrefill(kPrompt, params);
  ASSERT_TRUE(id.ok()) << id.status();
  std::optional<TokenEvent> done;
  while (prefill->HasWork() && !done) {
    absl::StatusOr<std::vector<TokenEvent>> events = prefill->Step();
    ASSERT_TRUE(events.ok()) << events.status();
    for (const TokenEvent& e : *events) {
      if (e.finish == RequestFinish::kPrefillDone) done = e;
    }
  }
  ASSERT_TRUE(done.has_value());
  ASSERT_TRUE(done->logprobs.has_value());
  const Reference reference(kPrompt, {done->token});
  ExpectMatches(*done->logprobs, done->token, reference.LogSoftmax(0), 3);

  // The decode side of the same request will not start without the first token's logprobs.
  std::unique_ptr<Engine> decode = MakeEngine();
  ASSERT_NE(decode, nullptr);
  absl::StatusOr<RequestId> imported = decode->AdmitImport(kPrompt, params);
  ASSERT_TRUE(imported.ok()) << imported.status();
  absl::StatusOr<TokenEvent> started = decode->StartDecode(*imported, done->token);
  EXPECT_EQ(started.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(started.status().message(), testing::HasSubstr("logprobs"));
}

}  // namespace
}  // namespace indexcache
