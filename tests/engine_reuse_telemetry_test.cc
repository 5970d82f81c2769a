// Reuse telemetry (--reuse-telemetry-rate): a Shared layer's reported overlap against the truth taken
// from `indexcache score`-style top-k captures (ScoreChunks with capture_topk) of separate engines; its
// scope (only rows whose whole context is in the step); that it changes no token; that rate 0 runs
// nothing; that a checkpoint without the Shared layers' indexers measures nothing and says so; and the
// step sampler's counter rule.
#include <algorithm>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "common/engine/engine.h"
#include "common/engine/step_sampler.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace indexcache {
namespace {

using ::testing::HasSubstr;

// Trained with all 16 indexers, so a searched pattern leaves Shared layers that still have theirs.
const std::string kTrained = std::string(INDEXCACHE_MODELS_DIR) + "/glm-dsa-trained";
// Its distilled 1/4 variant keeps only the 4 Full layers' indexers.
const std::string kDistilled = std::string(INDEXCACHE_MODELS_DIR) + "/glm-dsa-trained-distill-1of4";
const std::string kSearched = "FFSSSSFSSSSFSSSS";
constexpr int32_t kTopK = 128;        // glm-dsa-trained's index_topk
constexpr int32_t kChunk = 512;       // max_batch_tokens: a 600-token prompt is two steps
constexpr int32_t kPromptLen = 600;

std::vector<int32_t> Prompt(int32_t vocab, int32_t length = kPromptLen) {
  std::mt19937 rng(7);
  std::uniform_int_distribution<int32_t> id(5, vocab - 1);
  std::vector<int32_t> ids(length);
  for (int32_t& t : ids) t = id(rng);
  return ids;
}

std::unique_ptr<Engine> MakeEngine(const std::string& model, const std::string& pattern, double rate) {
  EngineOptions o;
  o.model_dir = model;
  o.index_pattern = pattern;
  o.num_threads = 2;
  o.block_size = 16;
  o.kv_cache_bytes = size_t{64} << 20;
  o.max_batch_tokens = kChunk;
  o.reuse_telemetry_rate = rate;
  auto engine = Engine::Create(o);
  EXPECT_TRUE(engine.ok()) << engine.status();
  return engine.ok() ? std::move(*engine) : nullptr;
}

// Greedy generation of `n` tokens, stepping until the request ends.
std::vector<int32_t> Generate(Engine& engine, const std::vector<int32_t>& prompt, int32_t n) {
  SamplingParams p;
  p.temperature = 0.0f;
  p.max_new_tokens = n;
  p.ignore_eos = true;
  EXPECT_TRUE(engine.Submit(prompt, p).ok());
  std::vector<int32_t> tokens;
  while (engine.HasWork()) {
    auto events = engine.Step();
    EXPECT_TRUE(events.ok()) << events.status();
    if (!events.ok()) break;
    for (const TokenEvent& e : *events) {
      if (e.token >= 0) tokens.push_back(e.token);
    }
  }
  return tokens;
}

// Every layer's selection for every prompt row under `pattern`, as `indexcache score` captures it:
// [layer][row][k].
std::vector<std::vector<std::vector<int32_t>>> Capture(const std::string& pattern, const std::vector<int32_t>& prompt) {
  std::vector<std::vector<std::vector<int32_t>>> layers(pattern.size());
  auto engine = MakeEngine(kTrained, pattern, 0.0);
  if (engine == nullptr) return layers;
  const absl::Status status = engine->ScoreChunks(prompt, true, [&](int32_t, const ForwardResult& r) {
    for (size_t l = 0; l < layers.size(); ++l) {
      const std::vector<int32_t>& topk = r.topk[l];
      for (size_t i = 0; i < topk.size(); i += r.topk_cols) {
        layers[l].emplace_back(topk.begin() + i, topk.begin() + i + r.topk_cols);
      }
    }
    return absl::OkStatus();
  });
  EXPECT_TRUE(status.ok()) << status;
  return layers;
}

TEST(ReuseTelemetryTest, OverlapEqualsTheOneComputedFromScoreCaptures) {
  auto engine = MakeEngine(kTrained, kSearched, 1.0);
  ASSERT_NE(engine, nullptr);
  const std::vector<int32_t> prompt = Prompt(engine->config().vocab_size);
  Generate(*engine, prompt, 1);
  const IndexCacheStats stats = engine->TakeStats();
  // Only the first chunk holds its rows' whole context; the second is never measured.
  EXPECT_EQ(stats.reuse_telemetry_passes, 1u);

  const auto served = Capture(kSearched, prompt);
  int32_t shared_layers = 0;
  for (int32_t layer = 0; layer < 16; ++layer) {
    if (kSearched[layer] == 'F') {
      EXPECT_TRUE(layer >= static_cast<int32_t>(stats.reuse_overlap.size()) || stats.reuse_overlap[layer].rows == 0)
          << "Full layer " << layer << " reported an overlap";
      continue;
    }
    ++shared_layers;
    // Reused: what layer `layer` attends with under the pattern. Fresh: its own indexer on the same
    // hidden states — the same pattern with this one layer Full (everything below it is unchanged).
    std::string own = kSearched;
    own[layer] = 'F';
    const auto& reused = served[layer];
    const auto fresh = Capture(own, prompt)[layer];
    ASSERT_EQ(reused.size(), prompt.size());
    ASSERT_EQ(fresh.size(), prompt.size());
    uint64_t rows = 0;
    double sum = 0.0;
    std::vector<uint64_t> per_bucket(kReuseOverlapBuckets.size(), 0);
    for (int32_t r = kTopK; r < kChunk; ++r) {  // rows seeing more than top-k keys, first chunk only
      const std::set<int32_t> fresh_set(fresh[r].begin(), fresh[r].end());
      ASSERT_EQ(fresh_set.size(), static_cast<size_t>(kTopK)) << "row " << r;
      int32_t common = 0;
      for (int32_t p : reused[r]) common += fresh_set.count(p) > 0 ? 1 : 0;
      const double overlap = static_cast<double>(common) / kTopK;
      ++rows;
      sum += overlap;
      size_t b = 0;
      while (overlap > kReuseOverlapBuckets[b]) ++b;
      ++per_bucket[b];
    }
    ASSERT_LT(static_cast<size_t>(layer), stats.reuse_overlap.size());
    const ReuseOverlap& got = stats.reuse_overlap[layer];
    EXPECT_EQ(got.rows, rows) << "layer " << layer;
    EXPECT_DOUBLE_EQ(got.sum, sum) << "layer " << layer;
    EXPECT_EQ(std::vector<uint64_t>(got.buckets.begin(), got.buckets.end()), per_bucket) << "layer " << layer;
    // A trained model's layers agree partly: neither trivially all nor nothing.
    EXPECT_GT(sum / rows, 0.05) << "layer " << layer;
    EXPECT_LT(sum / rows, 0.999) << "layer " << layer;
  }
  EXPECT_EQ(shared_layers, 12);
}

TEST(ReuseTelemetryTest, ChangesNoTokenAndRateZeroMeasuresNothing) {
  auto off = MakeEngine(kTrained, kSearched, 0.0);
  auto on = MakeEngine(kTrained, kSearched, 1.0);
  ASSERT_NE(off, nullptr);
  ASSERT_NE(on, nullptr);
  const std::vector<int32_t> prompt = Prompt(off->config().vocab_size, 300);
  const std::vector<int32_t> tokens_off = Generate(*off, prompt, 12);
  EXPECT_EQ(Generate(*on, prompt, 12), tokens_off);
  EXPECT_EQ(tokens_off.size(), 12u);
  const IndexCacheStats stats_off = off->TakeStats();
  EXPECT_EQ(stats_off.reuse_telemetry_passes, 0u);
  EXPECT_TRUE(stats_off.reuse_overlap.empty());
  EXPECT_EQ(on->TakeStats().reuse_telemetry_passes, 1u);
  // Rate 0 loads no Shared layer's indexer.
  EXPECT_TRUE(off->model().TelemetryLayers().empty());
  EXPECT_EQ(on->model().TelemetryLayers().size(), 12u);
}

TEST(ReuseTelemetryTest, ACheckpointWithoutSharedIndexersMeasuresNothingAndSaysSo) {
  ::testing::internal::CaptureStderr();
  auto engine = MakeEngine(kDistilled, "", 1.0);
  const std::string log = ::testing::internal::GetCapturedStderr();
  ASSERT_NE(engine, nullptr);
  EXPECT_THAT(log, HasSubstr("no indexer weights for Shared layers [1,2,3,5,6,7,9,10,11,13,14,15]"));
  EXPECT_TRUE(engine->model().TelemetryLayers().empty());
  Generate(*engine, Prompt(engine->config().vocab_size, 300), 2);
  const IndexCacheStats stats = engine->TakeStats();
  EXPECT_EQ(stats.reuse_telemetry_passes, 0u);
  EXPECT_TRUE(stats.reuse_overlap.empty());
}

TEST(ReuseTelemetryTest, RefusesARateOutsideZeroToOne) {
  EngineOptions o;
  o.model_dir = kTrained;
  o.reuse_telemetry_rate = 1.5;
  auto engine = Engine::Create(o);
  ASSERT_FALSE(engine.ok());
  EXPECT_EQ(engine.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(StepSamplerTest, TakesAnEvenlySpacedShareByCounter) {
  StepSampler quarter(0.25);
  std::vector<bool> taken;
  for (int i = 0; i < 8; ++i) taken.push_back(quarter.Next());
  EXPECT_EQ(taken, (std::vector<bool>{false, false, false, true, false, false, false, true}));
  StepSampler third(1.0 / 3);
  int count = 0;
  for (int i = 0; i < 300; ++i) count += third.Next() ? 1 : 0;
  EXPECT_EQ(count, 100);
  StepSampler all(1.0), none(0.0);
  for (int i = 0; i < 10; ++i) {
    EXPECT_TRUE(all.Next());
    EXPECT_FALSE(none.Next());
  }
}

}  // namespace
}  // namespace indexcache
