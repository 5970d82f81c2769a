// A migrated request (SamplingParams::resumed_tokens): the router re-dispatches a stream whose decode
// worker died with prompt + the tokens already streamed, and the engine continues as if it had
// generated them. Truth: the same engine's undisturbed run of the same request. What the client saw
// before the splice (the undisturbed run's first G events) followed by what the resumed request
// streams must be the undisturbed stream: the same tokens, the same text — a stop string spanning the
// splice included — and, for seeded sampling, the same draws.
#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/types/span.h"
#include "common/engine/engine.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace indexcache {
namespace {

using ::testing::HasSubstr;

const std::string kBundled = std::string(INDEXCACHE_MODELS_DIR) + "/glm-dsa-tiny-random";  // has a tokenizer

// The bundled model's first ids after BOS: any in-vocabulary prompt serves.
const std::vector<int32_t> kPrompt = {3, 41, 97, 160, 22, 75, 301, 12, 9, 88, 140, 51, 6, 230, 17, 64};
constexpr int32_t kMaxNew = 40;

std::unique_ptr<Engine> MakeEngine() {
  EngineOptions options;
  options.model_dir = kBundled;
  options.block_size = 16;
  options.kv_cache_bytes = size_t{32} << 20;
  auto engine = Engine::Create(options);
  EXPECT_TRUE(engine.ok()) << engine.status();
  return engine.ok() ? std::move(*engine) : nullptr;
}

// One request's events, in order.
struct Stream {
  std::vector<int32_t> tokens;
  std::vector<std::string> texts;  // per event that carried a token
  RequestFinish finish = RequestFinish::kNone;

  // The text of events [from, to).
  std::string Text(size_t from = 0, size_t to = SIZE_MAX) const {
    std::string text;
    for (size_t i = from; i < std::min(to, texts.size()); ++i) text += texts[i];
    return text;
  }
};

Stream RunRequest(Engine& engine, const std::vector<int32_t>& prompt, const SamplingParams& params) {
  Stream out;
  absl::StatusOr<RequestId> id = engine.Submit(prompt, params);
  EXPECT_TRUE(id.ok()) << id.status();
  if (!id.ok()) return out;
  while (engine.HasWork()) {
    absl::StatusOr<std::vector<TokenEvent>> events = engine.Step();
    EXPECT_TRUE(events.ok()) << events.status();
    if (!events.ok()) break;
    for (const TokenEvent& e : *events) {
      EXPECT_NE(e.finish, RequestFinish::kError) << e.error;
      if (e.token >= 0) {
        out.tokens.push_back(e.token);
        out.texts.push_back(e.text);
      } else if (!e.text.empty()) {
        out.texts.back() += e.text;
      }
      if (e.finish != RequestFinish::kNone) out.finish = e.finish;
    }
  }
  EXPECT_EQ(engine.cache().num_used_blocks(), 0);
  return out;
}

// The request a migration sends after `resumed` of `whole`'s tokens reached the client.
Stream Resume(Engine& engine, const Stream& whole, int32_t resumed, SamplingParams params) {
  std::vector<int32_t> prompt = kPrompt;
  prompt.insert(prompt.end(), whole.tokens.begin(), whole.tokens.begin() + resumed);
  params.max_new_tokens -= resumed;
  params.resumed_tokens = resumed;
  return RunRequest(engine, prompt, params);
}

SamplingParams Greedy() {
  SamplingParams p;
  p.temperature = 0.0f;
  p.max_new_tokens = kMaxNew;
  p.ignore_eos = true;
  return p;
}

TEST(EngineResumeTest, GreedyTokensAndTextContinueAtEverySplice) {
  auto engine = MakeEngine();
  ASSERT_NE(engine, nullptr);
  ASSERT_NE(engine->tokenizer(), nullptr);
  const Stream whole = RunRequest(*engine, kPrompt, Greedy());
  ASSERT_EQ(whole.tokens.size(), static_cast<size_t>(kMaxNew));
  for (int32_t resumed : {1, 2, 7, 20, kMaxNew - 1}) {
    const Stream rest = Resume(*engine, whole, resumed, Greedy());
    EXPECT_EQ(rest.tokens, std::vector<int32_t>(whole.tokens.begin() + resumed, whole.tokens.end()))
        << "resumed after " << resumed;
    EXPECT_EQ(rest.Text(), whole.Text(resumed)) << "resumed after " << resumed;
    EXPECT_EQ(rest.finish, RequestFinish::kLength);
  }
}

TEST(EngineResumeTest, AStopStringSpanningTheSpliceStillEndsTheText) {
  auto engine = MakeEngine();
  ASSERT_NE(engine, nullptr);
  const Stream whole = RunRequest(*engine, kPrompt, Greedy());
  const std::string full = whole.Text();
  // A 3-byte stop string that starts in the last byte of token `resumed`'s text and whose first
  // occurrence is there: the client has seen the text before it, the resumed request must see it whole.
  int32_t found = 0;
  for (int32_t resumed = 3; resumed < kMaxNew - 3 && found < 3; ++resumed) {
    const size_t splice = whole.Text(0, resumed).size();  // bytes before the splice
    if (splice == 0 || splice + 2 > full.size()) continue;
    const std::string stop = full.substr(splice - 1, 3);
    if (full.find(stop) != splice - 1) continue;
    ++found;
    SamplingParams params = Greedy();
    params.stop_strings = {stop};
    const Stream stopped = RunRequest(*engine, kPrompt, params);
    ASSERT_EQ(stopped.finish, RequestFinish::kStop) << "stop '" << stop << "'";
    ASSERT_GT(stopped.tokens.size(), static_cast<size_t>(resumed)) << "the stop string completes after the splice";
    ASSERT_EQ(stopped.Text(), full.substr(0, splice - 1));
    // The first `resumed` events held back the stop string's first byte; the resumed request must too.
    const Stream rest = Resume(*engine, stopped, resumed, params);
    EXPECT_EQ(rest.finish, RequestFinish::kStop) << "stop '" << stop << "' after " << resumed;
    EXPECT_EQ(rest.tokens, std::vector<int32_t>(stopped.tokens.begin() + resumed, stopped.tokens.end()));
    EXPECT_EQ(stopped.Text(0, resumed) + rest.Text(), full.substr(0, splice - 1))
        << "stop '" << stop << "' after " << resumed;
  }
  EXPECT_EQ(found, 3) << "too few splices of this continuation start a fresh 3-byte string";
}

TEST(EngineResumeTest, SeededDrawsContinueWhereTheEarlierAttemptLeftOff) {
  auto engine = MakeEngine();
  ASSERT_NE(engine, nullptr);
  SamplingParams seeded = Greedy();
  seeded.temperature = 1.0f;
  seeded.seed = 7;
  const Stream whole = RunRequest(*engine, kPrompt, seeded);
  ASSERT_EQ(whole.tokens.size(), static_cast<size_t>(kMaxNew));
  for (int32_t resumed : {1, 13}) {
    const Stream rest = Resume(*engine, whole, resumed, seeded);
    EXPECT_EQ(rest.tokens, std::vector<int32_t>(whole.tokens.begin() + resumed, whole.tokens.end()))
        << "resumed after " << resumed;
  }
}

TEST(EngineResumeTest, ResumedTokensMustLeaveAPrompt) {
  auto engine = MakeEngine();
  ASSERT_NE(engine, nullptr);
  SamplingParams params = Greedy();
  params.resumed_tokens = static_cast<int32_t>(kPrompt.size());
  absl::StatusOr<RequestId> id = engine->Submit(kPrompt, params);
  ASSERT_FALSE(id.ok());
  EXPECT_EQ(id.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(id.status().message(), HasSubstr("resumed_tokens"));
}

}  // namespace
}  // namespace indexcache
