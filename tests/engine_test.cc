// The engine's request contract: Submit's front-door validation, how requests end (stop ids, token
// budget, stop strings, abort), seeded sampling, IndexCache pattern overrides, and the IndexCache
// counters. Truths: transformers' greedy continuations (tests/data/goldens/*/expected.json), the
// tokenizer (tested separately against HF tokenizers), and counts derived from the config.
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "absl/types/span.h"
#include "common/engine/engine.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/engine_steps.h"
#include "nlohmann/json.hpp"
#include "tests/sampling_replay.h"

namespace indexcache {
namespace {

using ::testing::HasSubstr;

const std::string kGoldens = std::string(INDEXCACHE_TEST_DATA) + "/goldens/";
const std::string kFreq2 = kGoldens + "moe_freq2";  // F F S F S, no tokenizer
const std::string kBundled = std::string(INDEXCACHE_MODELS_DIR) + "/glm-dsa-tiny-random";

nlohmann::json ReadJson(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return nlohmann::json::parse(text.str());
}

struct Greedy {
  std::vector<int32_t> prompt;
  std::vector<int32_t> output;
};

Greedy GoldenGreedy(const std::string& golden) {
  const nlohmann::json g = ReadJson(kGoldens + golden + "/expected.json")["greedy"];
  return {g["prompt_ids"].get<std::vector<int32_t>>(), g["output_ids"].get<std::vector<int32_t>>()};
}

std::unique_ptr<Engine> MakeEngine(EngineOptions options) {
  if (options.block_size == EngineOptions{}.block_size) options.block_size = 16;
  if (options.kv_cache_bytes == EngineOptions{}.kv_cache_bytes) options.kv_cache_bytes = size_t{32} << 20;
  auto engine = Engine::Create(options);
  EXPECT_TRUE(engine.ok()) << engine.status();
  return engine.ok() ? std::move(*engine) : nullptr;
}

std::unique_ptr<Engine> MakeEngine(const std::string& model_dir) {
  EngineOptions options;
  options.model_dir = model_dir;
  return MakeEngine(options);
}

// Everything one request produced, in order.
struct Outcome {
  std::vector<int32_t> tokens;
  std::vector<RequestFinish> finishes;  // one per event
  std::string text;
  RequestFinish finish = RequestFinish::kNone;
};

// Steps until no request is left; returns each request's outcome.
std::map<RequestId, Outcome> RunAll(Engine& engine) {
  std::map<RequestId, Outcome> out;
  for (int steps = 0; engine.HasWork(); ++steps) {
    auto events = engine.Step();
    EXPECT_TRUE(events.ok()) << events.status();
    if (!events.ok() || steps > 10000) break;
    for (const TokenEvent& e : *events) {
      Outcome& o = out[e.request];
      EXPECT_EQ(o.finish, RequestFinish::kNone) << "event after the request finished";
      EXPECT_NE(e.finish, RequestFinish::kError) << e.error;
      if (e.token >= 0) o.tokens.push_back(e.token);
      o.finishes.push_back(e.finish);
      o.text += e.text;
      o.finish = e.finish;
    }
  }
  return out;
}

Outcome RunOne(Engine& engine, const std::vector<int32_t>& prompt, const SamplingParams& params) {
  auto id = engine.Submit(prompt, params);
  EXPECT_TRUE(id.ok()) << id.status();
  if (!id.ok()) return {};
  return RunAll(engine)[*id];
}

// --- Submit validation ----------------------------------------------------------------------------

class SubmitTest : public testing::Test {
 protected:
  void SetUp() override {
    engine_ = MakeEngine(kFreq2);
    ASSERT_NE(engine_, nullptr);
  }
  std::unique_ptr<Engine> engine_;
};

TEST_F(SubmitTest, RefusesEmptyPrompt) {
  auto id = engine_->Submit({}, engine_steps::GreedyParams(4));
  ASSERT_FALSE(id.ok());
  EXPECT_EQ(id.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(id.status().message(), HasSubstr("empty"));
  EXPECT_FALSE(engine_->HasWork());
}

TEST_F(SubmitTest, RefusesOutOfVocabularyIds) {
  const int32_t vocab = engine_->config().vocab_size;
  ASSERT_EQ(vocab, 256);
  for (int32_t bad : {vocab, -1, vocab + 1000}) {
    auto id = engine_->Submit({1, 2, bad, 3}, engine_steps::GreedyParams(4));
    ASSERT_FALSE(id.ok()) << bad;
    EXPECT_EQ(id.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(id.status().message(), HasSubstr(std::to_string(bad)));
  }
  EXPECT_TRUE(engine_->Submit({0, vocab - 1}, engine_steps::GreedyParams(1)).ok());
}

TEST_F(SubmitTest, RefusesInvalidSamplingParams) {
  std::vector<std::pair<SamplingParams, std::string>> cases;
  SamplingParams p = engine_steps::GreedyParams(4);
  p.temperature = -0.5f;
  cases.emplace_back(p, "temperature");
  p = engine_steps::GreedyParams(4);
  p.temperature = std::numeric_limits<float>::quiet_NaN();
  cases.emplace_back(p, "temperature");
  p = engine_steps::GreedyParams(4);
  p.top_p = 0.0f;
  cases.emplace_back(p, "top_p");
  p = engine_steps::GreedyParams(4);
  p.top_p = 1.5f;
  cases.emplace_back(p, "top_p");
  p = engine_steps::GreedyParams(4);
  p.top_k = -1;
  cases.emplace_back(p, "top_k");
  p = engine_steps::GreedyParams(4);
  p.min_p = -0.1f;
  cases.emplace_back(p, "min_p");
  p = engine_steps::GreedyParams(0);
  cases.emplace_back(p, "max_new_tokens");
  p = engine_steps::GreedyParams(4);
  p.stop_token_ids = {256};
  cases.emplace_back(p, "stop_token_ids");
  p = engine_steps::GreedyParams(4);
  p.stop_strings = {""};
  cases.emplace_back(p, "stop_strings");
  for (const auto& [params, field] : cases) {
    auto id = engine_->Submit({5, 6, 7}, params);
    ASSERT_FALSE(id.ok()) << field;
    EXPECT_EQ(id.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(id.status().message(), HasSubstr(field));
  }
  EXPECT_FALSE(engine_->HasWork()) << "a refused request must not be queued";
}

TEST_F(SubmitTest, RefusesMoreThanTheModelsPositions) {
  const int32_t max_pos = engine_->config().max_position_embeddings;
  ASSERT_EQ(max_pos, 512);
  std::vector<int32_t> prompt(16, 7);
  auto id = engine_->Submit(prompt, engine_steps::GreedyParams(max_pos - 16 + 1));
  ASSERT_FALSE(id.ok());
  EXPECT_EQ(id.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(id.status().message(), HasSubstr("512"));
  EXPECT_TRUE(engine_->Submit(prompt, engine_steps::GreedyParams(max_pos - 16)).ok());
  std::vector<int32_t> long_prompt(max_pos + 1, 7);
  EXPECT_FALSE(engine_->Submit(long_prompt, engine_steps::GreedyParams(1)).ok());
}

// The KV budget holds exactly 4 blocks of 16 tokens (sized from the config, independently of the
// cache's own arithmetic): a request that could never fit is refused up front.
// Greedy decode steps take their token from Backend::ArgMax instead of the sampler: on the CPU
// backend it must pick what Sampler picks at temperature 0, ties (lowest id), NaN, ±inf and rows
// with nothing usable (the sampler refuses them; ArgMax says -1) included.
TEST(GreedyArgMaxTest, CpuArgMaxPicksWhatTheGreedySamplerPicks) {
  constexpr int32_t kVocab = 37;
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<std::vector<float>> rows;
  for (int32_t r = 0; r < 6; ++r) {
    std::vector<float> row(kVocab);
    for (int32_t j = 0; j < kVocab; ++j) row[j] = std::sin(0.7f * j + 1.3f * r) * 3.0f;
    rows.push_back(row);
  }
  rows[1][5] = rows[1][30] = 9.0f;             // a tie: the lower id wins
  rows[2][0] = nan;
  rows[2][11] = 50.0f;                         // NaN never wins
  rows[3][20] = inf;
  rows[3][25] = inf;                           // +inf ties: the lower id
  rows[4].assign(kVocab, -inf);
  rows[4][36] = -1e30f;                        // the only usable value is the last
  rows[5].assign(kVocab, nan);
  rows[5][3] = -inf;                           // nothing usable
  auto backend = CreateBackend("cpu", 1);
  ASSERT_TRUE(backend.ok()) << backend.status();
  Backend& be = **backend;
  auto logits = be.Allocate(rows.size() * kVocab * sizeof(float));
  auto ids = be.Allocate(rows.size() * sizeof(int32_t));
  ASSERT_TRUE(logits.ok() && ids.ok());
  Tensor t = logits->View(DType::kF32, static_cast<int64_t>(rows.size()), kVocab);
  for (size_t r = 0; r < rows.size(); ++r) be.Upload(rows[r].data(), t.Rows(static_cast<int64_t>(r), 1));
  Tensor out = ids->View(DType::kI32, static_cast<int64_t>(rows.size()), 1);
  be.ArgMax(t, out);
  std::vector<int32_t> got(rows.size());
  ASSERT_TRUE(be.Download(out, got.data()).ok());
  SamplingParams greedy;
  greedy.temperature = 0.0f;
  for (size_t r = 0; r < rows.size(); ++r) {
    auto sampler = Sampler::Create(greedy, kVocab, 1);
    ASSERT_TRUE(sampler.ok());
    auto want = sampler->Sample(rows[r]);
    if (want.ok()) {
      EXPECT_EQ(got[r], *want) << "row " << r;
    } else {
      EXPECT_EQ(got[r], -1) << "row " << r << ": the sampler refuses it (" << want.status() << ")";
    }
  }
  EXPECT_EQ(got[1], 5);
  EXPECT_EQ(got[2], 11);
  EXPECT_EQ(got[3], 20);
  EXPECT_EQ(got[4], 36);
  EXPECT_EQ(got[5], -1);
}

TEST(EngineCacheLimitTest, RefusesMoreThanTheWholeCache) {
  const nlohmann::json config = ReadJson(kFreq2 + "/config.json");
  int32_t full = 0;
  for (const auto& t : config["indexer_types"]) full += t == "full";
  const size_t floats_per_token = config["num_hidden_layers"].get<size_t>() *
                                      (config["kv_lora_rank"].get<size_t>() + config["qk_rope_head_dim"].get<size_t>()) +
                                  full * config["index_head_dim"].get<size_t>();
  const size_t block_bytes = floats_per_token * sizeof(float) * 16;
  EngineOptions options;
  options.model_dir = kFreq2;
  options.block_size = 16;
  options.kv_cache_bytes = 4 * block_bytes + block_bytes / 2;
  auto engine = MakeEngine(options);
  ASSERT_NE(engine, nullptr);
  ASSERT_EQ(engine->cache().num_blocks(), 4);
  EXPECT_EQ(engine->cache().bytes_per_block(), block_bytes);

  const std::vector<int32_t> prompt(10, 3);
  auto id = engine->Submit(prompt, engine_steps::GreedyParams(55));  // 65 tokens > 64
  ASSERT_FALSE(id.ok());
  EXPECT_EQ(id.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(id.status().message(), HasSubstr("65"));
  EXPECT_THAT(id.status().message(), HasSubstr("64"));
  // Exactly the cache runs to the end.
  Outcome o = RunOne(*engine, prompt, engine_steps::GreedyParams(54));
  EXPECT_EQ(o.tokens.size(), 54u);
  EXPECT_EQ(o.finish, RequestFinish::kLength);
  EXPECT_EQ(engine->cache().num_used_blocks(), 0);
}

// A prefill worker's request caches its prompt alone (the decode worker holds what is generated):
// on the same 4-block cache it is admitted whenever the prompt fits, whatever max_new_tokens says.
TEST(EngineCacheLimitTest, PrefillOnlyNeedsRoomForThePromptAlone) {
  EngineOptions options;
  options.model_dir = kFreq2;
  options.block_size = 16;
  auto probe = MakeEngine(options);
  ASSERT_NE(probe, nullptr);
  options.kv_cache_bytes = 4 * probe->cache().bytes_per_block();
  auto engine = MakeEngine(options);
  ASSERT_NE(engine, nullptr);
  ASSERT_EQ(engine->cache().num_blocks(), 4);

  const std::vector<int32_t> prompt(60, 3);
  EXPECT_EQ(engine->Submit(prompt, engine_steps::GreedyParams(20)).status().code(), absl::StatusCode::kResourceExhausted);
  absl::StatusOr<RequestId> id = engine->SubmitPrefill(prompt, engine_steps::GreedyParams(20));
  ASSERT_TRUE(id.ok()) << id.status();
  while (engine->HasWork()) ASSERT_TRUE(engine->Step().ok());
  EXPECT_EQ(engine->CachedTokens(*id).value_or(-1), 60);
  engine->Release(*id);
  EXPECT_EQ(engine->cache().num_used_blocks(), 0);
  // A prompt that itself exceeds the cache is still refused up front.
  absl::StatusOr<RequestId> too_long = engine->SubmitPrefill(std::vector<int32_t>(65, 3), engine_steps::GreedyParams(1));
  EXPECT_EQ(too_long.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(too_long.status().message(), HasSubstr("the prompt (65 tokens)"));
}

// Three requests of 2 blocks each on a 4-block cache: one waits or is preempted and re-prefilled,
// and every one still produces transformers' greedy continuation.
TEST(EngineCacheLimitTest, RequestsBeyondTheCacheWaitAndFinish) {
  EngineOptions options;
  options.model_dir = kFreq2;
  options.block_size = 16;
  // 5 layers × (kv_lora 32 + rope 8) + 3 Full layers × index_head_dim 16 floats per token.
  options.kv_cache_bytes = 4 * ((5 * 40 + 3 * 16) * sizeof(float) * 16);
  auto engine = MakeEngine(options);
  ASSERT_NE(engine, nullptr);
  ASSERT_EQ(engine->cache().num_blocks(), 4);
  const Greedy g = GoldenGreedy("moe_freq2");
  std::vector<RequestId> ids;
  for (int i = 0; i < 3; ++i) {
    auto id = engine->Submit(g.prompt, engine_steps::GreedyParams(16));
    ASSERT_TRUE(id.ok()) << id.status();
    ids.push_back(*id);
  }
  std::map<RequestId, Outcome> out = RunAll(*engine);
  for (RequestId id : ids) {
    EXPECT_EQ(out[id].tokens, g.output) << "request " << id;
    EXPECT_EQ(out[id].finish, RequestFinish::kLength);
  }
  EXPECT_EQ(engine->cache().num_used_blocks(), 0);
}

// --- How requests end ------------------------------------------------------------------------------

TEST(EngineFinishTest, MaxNewTokensGivesExactlyNTokens) {
  auto engine = MakeEngine(kFreq2);
  ASSERT_NE(engine, nullptr);
  const Greedy g = GoldenGreedy("moe_freq2");
  for (int32_t n : {1, 5}) {
    Outcome o = RunOne(*engine, g.prompt, engine_steps::GreedyParams(n));
    ASSERT_EQ(o.tokens.size(), static_cast<size_t>(n));
    EXPECT_EQ(o.tokens, std::vector<int32_t>(g.output.begin(), g.output.begin() + n));
    EXPECT_EQ(o.finish, RequestFinish::kLength);
    for (size_t i = 0; i + 1 < o.finishes.size(); ++i) EXPECT_EQ(o.finishes[i], RequestFinish::kNone);
    EXPECT_EQ(engine->cache().num_used_blocks(), 0);
  }
}

TEST(EngineFinishTest, StopTokenIdEndsWithStop) {
  auto engine = MakeEngine(kFreq2);
  ASSERT_NE(engine, nullptr);
  const Greedy g = GoldenGreedy("moe_freq2");
  // Stop at the third greedy token (the first two differ from it).
  const int32_t stop = g.output[2];
  ASSERT_NE(g.output[0], stop);
  ASSERT_NE(g.output[1], stop);
  SamplingParams p = engine_steps::GreedyParams(16);
  p.stop_token_ids = {stop};
  Outcome o = RunOne(*engine, g.prompt, p);
  EXPECT_EQ(o.tokens, std::vector<int32_t>(g.output.begin(), g.output.begin() + 3));
  EXPECT_EQ(o.finish, RequestFinish::kStop);
  EXPECT_EQ(engine->cache().num_used_blocks(), 0);
}

TEST(EngineFinishTest, EosEndsWithStopUnlessIgnored) {
  auto engine = MakeEngine(kFreq2);
  ASSERT_NE(engine, nullptr);
  const Greedy g = GoldenGreedy("moe_freq2");
  ASSERT_EQ(engine->config().eos_token_ids, std::vector<int32_t>{1});
  // Greedy never produces the eos id 1 here, so a request without ignore_eos runs its budget.
  SamplingParams p = engine_steps::GreedyParams(6);
  p.ignore_eos = false;
  Outcome o = RunOne(*engine, g.prompt, p);
  EXPECT_EQ(o.tokens, std::vector<int32_t>(g.output.begin(), g.output.begin() + 6));
  EXPECT_EQ(o.finish, RequestFinish::kLength);
}

// A checkpoint whose config names the third greedy token as an EOS id (a temporary copy of
// moe_freq2): generation ends there with kStop, unless ignore_eos.
TEST(EngineFinishTest, ConfigEosIdEndsWithStop) {
  const Greedy g = GoldenGreedy("moe_freq2");
  std::string dir = (std::filesystem::temp_directory_path() / "ic_engine_eos_XXXXXX").string();
  ASSERT_NE(mkdtemp(dir.data()), nullptr);
  std::filesystem::copy_file(kFreq2 + "/model.safetensors", dir + "/model.safetensors");
  nlohmann::json config = ReadJson(kFreq2 + "/config.json");
  config["eos_token_id"] = {200, g.output[2]};
  std::ofstream(dir + "/config.json") << config.dump();
  {
    auto engine = MakeEngine(dir);
    ASSERT_NE(engine, nullptr);
    SamplingParams p = engine_steps::GreedyParams(6);
    p.ignore_eos = false;
    Outcome o = RunOne(*engine, g.prompt, p);
    EXPECT_EQ(o.tokens, std::vector<int32_t>(g.output.begin(), g.output.begin() + 3));
    EXPECT_EQ(o.finish, RequestFinish::kStop);
    p.ignore_eos = true;
    o = RunOne(*engine, g.prompt, p);
    EXPECT_EQ(o.tokens, std::vector<int32_t>(g.output.begin(), g.output.begin() + 6));
    EXPECT_EQ(o.finish, RequestFinish::kLength);
  }
  std::filesystem::remove_all(dir);
}

// With a tokenizer, a stop token's text is not emitted.
TEST(EngineFinishTest, StopTokenTextIsNotEmitted) {
  auto engine = MakeEngine(kBundled);
  ASSERT_NE(engine, nullptr);
  const Greedy g = GoldenGreedy("bundled");
  SamplingParams p = engine_steps::GreedyParams(static_cast<int32_t>(g.output.size()));
  p.stop_token_ids = {g.output[3]};
  Outcome o = RunOne(*engine, g.prompt, p);
  EXPECT_EQ(o.finish, RequestFinish::kStop);
  EXPECT_EQ(o.tokens, std::vector<int32_t>(g.output.begin(), g.output.begin() + 4));
  auto text = engine->tokenizer()->Decode(absl::MakeConstSpan(g.output.data(), 3), true);
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(o.text, *text);
}

// The bundled model has a tokenizer: the text streamed ends right before the stop string.
TEST(EngineFinishTest, StopStringEndsGenerationAndIsNotEmitted) {
  auto engine = MakeEngine(kBundled);
  ASSERT_NE(engine, nullptr);
  ASSERT_NE(engine->tokenizer(), nullptr);
  const Greedy g = GoldenGreedy("bundled");
  auto full = engine->tokenizer()->Decode(g.output, /*skip_special_tokens=*/true);
  ASSERT_TRUE(full.ok()) << full.status();

  // Without a stop string: the whole continuation and its text.
  Outcome plain = RunOne(*engine, g.prompt, engine_steps::GreedyParams(static_cast<int32_t>(g.output.size())));
  ASSERT_EQ(plain.tokens, g.output);
  EXPECT_EQ(plain.text, *full);

  // A 3-byte stop string that starts in the 5th token's text and runs into the 6th.
  auto prefix = engine->tokenizer()->Decode(absl::MakeConstSpan(g.output.data(), 5), true);
  ASSERT_TRUE(prefix.ok());
  ASSERT_GE(full->size(), prefix->size() + 2);
  const std::string stop = full->substr(prefix->size() - 1, 3);
  const size_t at = full->find(stop);
  // The token whose text completes the stop string's first occurrence is the last one generated.
  size_t last = 0;
  for (size_t n = 1; n <= g.output.size(); ++n) {
    auto text = engine->tokenizer()->Decode(absl::MakeConstSpan(g.output.data(), n), true);
    ASSERT_TRUE(text.ok());
    if (text->size() >= at + stop.size()) {
      last = n;
      break;
    }
  }
  SamplingParams p = engine_steps::GreedyParams(static_cast<int32_t>(g.output.size()));
  p.stop_strings = {stop};
  Outcome o = RunOne(*engine, g.prompt, p);
  EXPECT_EQ(o.finish, RequestFinish::kStop);
  EXPECT_EQ(o.text, full->substr(0, at)) << "stop string '" << stop << "' in '" << *full << "'";
  EXPECT_EQ(o.text.find(stop), std::string::npos);
  EXPECT_EQ(o.tokens, std::vector<int32_t>(g.output.begin(), g.output.begin() + last));
  EXPECT_EQ(engine->cache().num_used_blocks(), 0);
}

// --- Seeded sampling ---------------------------------------------------------------------------------

TEST(EngineSamplingTest, SameSeedSameTokensAcrossEngines) {
  auto a = MakeEngine(kFreq2);
  auto b = MakeEngine(kFreq2);
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  const Greedy g = GoldenGreedy("moe_freq2");
  SamplingParams p;
  p.temperature = 1.0f;
  p.top_p = 0.95f;
  p.max_new_tokens = 16;
  p.ignore_eos = true;
  std::set<std::vector<int32_t>> distinct;
  for (uint64_t seed : {1u, 2u, 3u, 4u}) {
    p.seed = seed;
    Outcome first = RunOne(*a, g.prompt, p);
    Outcome second = RunOne(*b, g.prompt, p);
    Outcome again = RunOne(*a, g.prompt, p);
    ASSERT_EQ(first.tokens.size(), 16u);
    EXPECT_EQ(first.tokens, second.tokens) << "seed " << seed << ": two engines disagree";
    EXPECT_EQ(first.tokens, again.tokens) << "seed " << seed << ": one engine, two runs disagree";
    distinct.insert(first.tokens);
  }
  EXPECT_GT(distinct.size(), 1u) << "different seeds should draw different continuations";
}

// Sampled rows take their token from Backend::SampleTokens (no logits download), greedy rows from
// ArgMax, in one batch: a host Sampler seeded like each request, replayed over the logits of its
// prompt + generated tokens, draws every token the engine drew (last-bit differences between the
// scoring pass and the decode steps may move a draw that sits at a boundary: detected, and rare).
TEST(EngineSamplingTest, DeviceDrawsAreTheSamplersDrawsOnTheSameLogits) {
  auto engine = MakeEngine(kFreq2);
  ASSERT_NE(engine, nullptr);
  const Greedy g = GoldenGreedy("moe_freq2");
  std::vector<SamplingParams> mixes(5);
  mixes[0].temperature = 0.0f;
  mixes[1].top_p = 0.9f;
  mixes[2].temperature = 0.7f;
  mixes[2].top_k = 40;
  mixes[3].temperature = 1.3f;
  mixes[3].min_p = 0.05f;
  mixes[4].top_k = 100;
  mixes[4].top_p = 0.8f;
  mixes[4].min_p = 0.01f;
  std::map<RequestId, SamplingParams> submitted;
  for (size_t m = 0; m < mixes.size(); ++m) {
    mixes[m].max_new_tokens = 24;
    mixes[m].ignore_eos = true;
    mixes[m].seed = 100 + m;
    auto id = engine->Submit(g.prompt, mixes[m]);
    ASSERT_TRUE(id.ok()) << id.status();
    submitted[*id] = mixes[m];
  }
  ReplayOutcome total;
  for (const auto& [id, outcome] : RunAll(*engine)) {
    ASSERT_EQ(outcome.tokens.size(), 24u);
    const ReplayOutcome r = ReplaySampler(*engine, g.prompt, submitted.at(id), outcome.tokens);
    total.exact += r.exact;
    total.boundary += r.boundary;
    total.wrong += r.wrong;
  }
  EXPECT_EQ(total.wrong, 0);
  EXPECT_LE(total.boundary, 2) << "boundary draws should be rare";
}

// --- Abort -----------------------------------------------------------------------------------------

TEST(EngineAbortTest, AbortEndsTheRequestAndFreesItsBlocks) {
  auto engine = MakeEngine(kFreq2);
  ASSERT_NE(engine, nullptr);
  const Greedy g = GoldenGreedy("moe_freq2");
  auto id = engine->Submit(g.prompt, engine_steps::GreedyParams(16));
  ASSERT_TRUE(id.ok());
  auto other = engine->Submit(g.prompt, engine_steps::GreedyParams(3));
  ASSERT_TRUE(other.ok());
  auto events = engine->Step();  // prefill: first tokens
  ASSERT_TRUE(events.ok()) << events.status();
  EXPECT_GT(engine->cache().num_used_blocks(), 0);
  engine->Abort(*id);
  engine->Abort(12345);  // unknown: nothing happens
  events = engine->Step();
  ASSERT_TRUE(events.ok()) << events.status();
  int aborts = 0;
  for (const TokenEvent& e : *events) {
    if (e.request != *id) continue;
    EXPECT_EQ(e.finish, RequestFinish::kAbort);
    EXPECT_EQ(e.token, -1);
    ++aborts;
  }
  EXPECT_EQ(aborts, 1);
  std::map<RequestId, Outcome> rest = RunAll(*engine);
  EXPECT_FALSE(rest.contains(*id)) << "no event after the abort";
  EXPECT_EQ(rest[*other].finish, RequestFinish::kLength);
  EXPECT_FALSE(engine->HasWork());
  EXPECT_EQ(engine->cache().num_used_blocks(), 0);
}

TEST(EngineAbortTest, AbortBeforeAnyStep) {
  auto engine = MakeEngine(kFreq2);
  ASSERT_NE(engine, nullptr);
  auto id = engine->Submit({4, 5, 6}, engine_steps::GreedyParams(4));
  ASSERT_TRUE(id.ok());
  engine->Abort(*id);
  auto events = engine->Step();
  ASSERT_TRUE(events.ok());
  ASSERT_EQ(events->size(), 1u);
  EXPECT_EQ((*events)[0].request, *id);
  EXPECT_EQ((*events)[0].finish, RequestFinish::kAbort);
  EXPECT_FALSE(engine->HasWork());
  EXPECT_EQ(engine->cache().num_used_blocks(), 0);
}

// --- IndexCache pattern overrides ------------------------------------------------------------------

TEST(EngineIndexOverrideTest, PatternOverride) {
  EngineOptions options;
  options.model_dir = kFreq2;
  options.index_pattern = "FFSSS";  // drops layer 3's indexer, which the checkpoint has
  auto engine = MakeEngine(options);
  ASSERT_NE(engine, nullptr);
  EXPECT_EQ(FormatIndexPattern(engine->config().indexer_types), "FFSSS");
  for (int32_t l = 0; l < 5; ++l) EXPECT_EQ(engine->cache().index_key_pool(l).empty(), l >= 2) << l;
  Outcome o = RunOne(*engine, GoldenGreedy("moe_freq2").prompt, engine_steps::GreedyParams(4));
  EXPECT_EQ(o.tokens.size(), 4u);
}

TEST(EngineIndexOverrideTest, OverridesEqualToTheCheckpointsPatternReproduceTransformers) {
  const Greedy g = GoldenGreedy("moe_freq2");
  EngineOptions by_pattern;
  by_pattern.model_dir = kFreq2;
  by_pattern.index_pattern = "FFSFS";
  EngineOptions by_freq;
  by_freq.model_dir = kFreq2;
  by_freq.index_freq = 2;  // offset 2 (the config's default): F F S F S
  for (const EngineOptions& options : {by_pattern, by_freq}) {
    auto engine = MakeEngine(options);
    ASSERT_NE(engine, nullptr);
    EXPECT_EQ(FormatIndexPattern(engine->config().indexer_types), "FFSFS");
    EXPECT_EQ(RunOne(*engine, g.prompt, engine_steps::GreedyParams(16)).tokens, g.output);
  }
}

TEST(EngineIndexOverrideTest, FreqOverrideOnTheBundledModel) {
  // 8 layers, offset 2: Full where i < 2 or (i - 1) % freq == 0.
  const std::vector<std::pair<int32_t, std::string>> cases = {{1, "FFFFFFFF"}, {2, "FFSFSFSF"}, {4, "FFSSSFSS"}};
  for (const auto& [freq, want] : cases) {
    EngineOptions options;
    options.model_dir = kBundled;
    options.index_freq = freq;
    auto engine = MakeEngine(options);
    ASSERT_NE(engine, nullptr);
    EXPECT_EQ(FormatIndexPattern(engine->config().indexer_types), want) << freq;
  }
}

TEST(EngineIndexOverrideTest, BadOverridesAreRefused) {
  EngineOptions both;
  both.model_dir = kBundled;
  both.index_pattern = "FFFFFFFF";
  both.index_freq = 2;
  auto engine = Engine::Create(both);
  ASSERT_FALSE(engine.ok());
  EXPECT_EQ(engine.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(engine.status().message(), HasSubstr("not both"));

  EngineOptions negative;
  negative.model_dir = kBundled;
  negative.index_freq = -1;
  EXPECT_EQ(Engine::Create(negative).status().code(), absl::StatusCode::kInvalidArgument);

  for (const std::string pattern : {"FFF", "SFFFFFFF", "FFxFFFFF"}) {
    EngineOptions bad;
    bad.model_dir = kBundled;
    bad.index_pattern = pattern;
    engine = Engine::Create(bad);
    ASSERT_FALSE(engine.ok()) << pattern;
    EXPECT_EQ(engine.status().code(), absl::StatusCode::kInvalidArgument) << pattern;
  }

  // Layer 2 of moe_freq2 was saved Shared: asking it to be Full names the layer and the indexer.
  EngineOptions full;
  full.model_dir = kFreq2;
  full.index_pattern = "FFFFF";
  engine = Engine::Create(full);
  ASSERT_FALSE(engine.ok());
  EXPECT_EQ(engine.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(engine.status().message(), HasSubstr("layer 2"));
  EXPECT_THAT(engine.status().message(), HasSubstr("indexer"));
  // freq 3 → F F S S F: layer 4 has no indexer weights either.
  EngineOptions freq3;
  freq3.model_dir = kFreq2;
  freq3.index_freq = 3;
  engine = Engine::Create(freq3);
  ASSERT_FALSE(engine.ok());
  EXPECT_THAT(engine.status().message(), HasSubstr("layer 4"));
}

TEST(EngineCreateTest, BadOptionsAreStatuses) {
  EngineOptions missing;
  missing.model_dir = "/nonexistent/model";
  EXPECT_EQ(Engine::Create(missing).status().code(), absl::StatusCode::kNotFound);
  EngineOptions device;
  device.model_dir = kBundled;
  device.device = "tpu";
  auto engine = Engine::Create(device);
  ASSERT_FALSE(engine.ok());
  EXPECT_THAT(engine.status().message(), HasSubstr("tpu"));
  EngineOptions block;
  block.model_dir = kBundled;
  block.block_size = 0;
  EXPECT_EQ(Engine::Create(block).status().code(), absl::StatusCode::kInvalidArgument);
  EngineOptions tiny_cache;
  tiny_cache.model_dir = kBundled;
  tiny_cache.kv_cache_bytes = 100;
  EXPECT_EQ(Engine::Create(tiny_cache).status().code(), absl::StatusCode::kResourceExhausted);
}

// --- IndexCache counters -----------------------------------------------------------------------------

// moe_freq2 runs F F S F S: 3 indexer runs and 2 skips per token.
void ExpectCounters(const IndexCacheStats& s, uint64_t tokens, const ModelConfig& c) {
  EXPECT_EQ(s.indexer_runs, 3 * tokens);
  EXPECT_EQ(s.indexer_skips, 2 * tokens);
  EXPECT_EQ(s.index_key_bytes_not_stored, 2 * tokens * c.index_head_dim * sizeof(float));
  EXPECT_GT(s.indexer_flops, 0.0);
  EXPECT_GE(s.indexer_seconds, 0.0);
}

TEST(EngineStatsTest, CountersFromGeneration) {
  auto engine = MakeEngine(kFreq2);
  ASSERT_NE(engine, nullptr);
  ASSERT_EQ(FormatIndexPattern(engine->config().indexer_types), "FFSFS");
  engine->TakeStats();
  const Greedy g = GoldenGreedy("moe_freq2");
  Outcome o = RunOne(*engine, g.prompt, engine_steps::GreedyParams(16));
  ASSERT_EQ(o.tokens.size(), 16u);
  // The prompt's 16 tokens, then each generated token but the last goes through the model.
  ExpectCounters(engine->TakeStats(), 16 + 15, engine->config());
  // TakeStats resets.
  const IndexCacheStats zero = engine->TakeStats();
  EXPECT_EQ(zero.indexer_runs, 0u);
  EXPECT_EQ(zero.indexer_skips, 0u);
  EXPECT_EQ(zero.index_key_bytes_not_stored, 0u);
  EXPECT_EQ(zero.indexer_flops, 0.0);
}

TEST(EngineStatsTest, CountersFromScoringInChunks) {
  EngineOptions options;
  options.model_dir = kFreq2;
  options.max_batch_tokens = 7;
  auto engine = MakeEngine(options);
  ASSERT_NE(engine, nullptr);
  const std::vector<int32_t> ids = ReadJson(kFreq2 + "/expected.json")["input_ids"].get<std::vector<int32_t>>();
  int chunks = 0;
  ASSERT_TRUE(engine->ScoreChunks(ids, false, [&](int32_t, const ForwardResult&) {
                      ++chunks;
                      return absl::OkStatus();
                    }).ok());
  EXPECT_EQ(chunks, (static_cast<int>(ids.size()) + 6) / 7);
  ExpectCounters(engine->TakeStats(), ids.size(), engine->config());
  EXPECT_EQ(engine->cache().num_used_blocks(), 0);
}

// Fewer Full layers, fewer indexer FLOPs: the bundled model all-Full vs freq 4 (3 of 8 Full).
TEST(EngineStatsTest, FlopsShrinkWithFewerFullLayers) {
  const std::vector<int32_t> prompt = GoldenGreedy("bundled").prompt;
  double flops[2];
  for (int i = 0; i < 2; ++i) {
    EngineOptions options;
    options.model_dir = kBundled;
    options.index_freq = i == 0 ? 1 : 4;
    auto engine = MakeEngine(options);
    ASSERT_NE(engine, nullptr);
    RunOne(*engine, prompt, engine_steps::GreedyParams(4));
    const IndexCacheStats s = engine->TakeStats();
    const uint64_t tokens = prompt.size() + 3;
    const uint64_t full = i == 0 ? 8 : 3;
    EXPECT_EQ(s.indexer_runs, full * tokens);
    EXPECT_EQ(s.indexer_skips, (8 - full) * tokens);
    EXPECT_EQ(s.index_key_bytes_not_stored, (8 - full) * tokens * engine->config().index_head_dim * sizeof(float));
    flops[i] = s.indexer_flops;
  }
  // Every run costs the same here (same tokens, same context per layer): FLOPs scale with runs.
  EXPECT_NEAR(flops[1] / flops[0], 3.0 / 8.0, 1e-9);
}

}  // namespace
}  // namespace indexcache
