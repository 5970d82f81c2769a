// An adaptive IndexCache pattern (--length-patterns, common/model/pattern_schedule.h): every request
// runs the pattern its client's prompt length picks, whatever it is batched with. Truths: the same
// request on an engine running that one pattern (tested against transformers and the float64
// reference elsewhere) for the tokens; the indexer counters for which pattern each row ran (a row
// runs the indexer once per Full layer of its own pattern); the export's slices for which index keys
// a request's rows carry.
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/engine/engine.h"
#include "common/engine/published_load.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/engine_steps.h"

namespace indexcache {
namespace {

using ::testing::HasSubstr;

const std::string kBundled = std::string(INDEXCACHE_MODELS_DIR) + "/glm-dsa-tiny-random";  // 8 layers, top-64
const std::string kBase = "FFFFFFFF";
const std::string kRanges = "100:FFSSFSSS,200:FSSSSSSS";
constexpr int32_t kBlock = 16;

std::unique_ptr<Engine> MakeEngine(const std::string& pattern, const std::string& ranges, int32_t chunk = 64) {
  EngineOptions o;
  o.model_dir = kBundled;
  o.num_threads = 2;
  o.index_pattern = pattern;
  o.length_patterns = ranges;
  o.kv_cache_bytes = size_t{32} << 20;
  o.block_size = kBlock;
  o.max_batch_tokens = chunk;
  o.reuse_telemetry_rate = 0;
  auto engine = Engine::Create(o);
  EXPECT_TRUE(engine.ok()) << engine.status();
  return engine.ok() ? std::move(*engine) : nullptr;
}

std::vector<int32_t> Tokens(int32_t n, int32_t salt) {
  std::vector<int32_t> ids;
  for (int32_t i = 0; i < n; ++i) ids.push_back(5 + (i * 131 + salt * 977 + (i * i) % 29) % 2000);
  return ids;
}

// Steps until every request ended; each request's tokens.
std::map<RequestId, std::vector<int32_t>> RunAll(Engine& engine) {
  std::map<RequestId, std::vector<int32_t>> tokens;
  while (engine.HasWork()) {
    absl::StatusOr<std::vector<TokenEvent>> events = engine.Step();
    EXPECT_TRUE(events.ok()) << events.status();
    if (!events.ok()) break;
    for (const TokenEvent& e : *events) {
      EXPECT_NE(e.finish, RequestFinish::kError) << e.error;
      if (e.token >= 0) tokens[e.request].push_back(e.token);
    }
  }
  return tokens;
}

int32_t FullLayers(const std::string& pattern) { return static_cast<int32_t>(std::count(pattern.begin(), pattern.end(), 'F')); }

TEST(AdaptivePatternTest, EachRequestGetsTheTokensOfItsOwnPatternWhileBatchedWithOthers) {
  auto adaptive = MakeEngine(kBase, kRanges);
  ASSERT_NE(adaptive, nullptr);
  // One prompt per range, all admitted at once: with 64-token steps, decode rows of one pattern share
  // passes with prompt chunks of another.
  const std::vector<std::pair<int32_t, std::string>> prompts = {{60, kBase}, {150, "FFSSFSSS"}, {250, "FSSSSSSS"}};
  constexpr int32_t kNew = 6;
  std::vector<RequestId> ids;
  for (size_t i = 0; i < prompts.size(); ++i) {
    absl::StatusOr<RequestId> id = adaptive->Submit(Tokens(prompts[i].first, static_cast<int32_t>(i)), engine_steps::GreedyParams(kNew));
    ASSERT_TRUE(id.ok()) << id.status();
    ids.push_back(*id);
  }
  std::map<RequestId, std::vector<int32_t>> got = RunAll(*adaptive);
  const IndexCacheStats stats = adaptive->TakeStats();
  EXPECT_EQ(stats.pattern_requests, (std::vector<uint64_t>{1, 1, 1}));

  uint64_t runs = 0, skips = 0;
  for (size_t i = 0; i < prompts.size(); ++i) {
    const auto& [length, pattern] = prompts[i];
    auto alone = MakeEngine(pattern, "");
    ASSERT_NE(alone, nullptr);
    absl::StatusOr<RequestId> id = alone->Submit(Tokens(length, static_cast<int32_t>(i)), engine_steps::GreedyParams(kNew));
    ASSERT_TRUE(id.ok()) << id.status();
    EXPECT_EQ(got[ids[i]], RunAll(*alone)[*id]) << length << "-token prompt, pattern " << pattern;
    // Rows through the model: the prompt and every generated token but the last.
    const uint64_t rows = length + kNew - 1;
    runs += rows * FullLayers(pattern);
    skips += rows * (8 - FullLayers(pattern));
  }
  EXPECT_EQ(stats.indexer_runs, runs);
  EXPECT_EQ(stats.indexer_skips, skips);
  EXPECT_EQ(adaptive->cache().num_used_blocks(), 0);
}

TEST(AdaptivePatternTest, TheClientsPromptLengthPicksSoAResumedRequestKeepsItsPattern) {
  auto engine = MakeEngine(kBase, kRanges);
  ASSERT_NE(engine, nullptr);
  EXPECT_EQ(engine->PatternFor(99, 0), 0);
  EXPECT_EQ(engine->PatternFor(100, 0), 1);
  EXPECT_EQ(engine->PatternFor(250, 0), 2);
  // 190 client tokens and 60 generated before a migration: still the 100-token range's pattern.
  EXPECT_EQ(engine->PatternFor(250, 60), 1);
  EXPECT_EQ(FormatIndexPattern(engine->config().indexer_types), "FFFFFFFF");  // loaded: every layer some pattern runs Full
}

TEST(AdaptivePatternTest, PatternsShareNoCachedBlocks) {
  auto engine = MakeEngine(kBase, kRanges);
  ASSERT_NE(engine, nullptr);
  const std::vector<int32_t> first = Tokens(150, 7);  // the 100-token range
  ASSERT_TRUE(engine->Submit(first, engine_steps::GreedyParams(1)).ok());
  RunAll(*engine);
  engine->TakePrefixCacheStats();
  // The same 150 tokens and 100 more: another pattern's request, whose rows differ from layer 1 on.
  std::vector<int32_t> longer = first;
  const std::vector<int32_t> more = Tokens(100, 8);
  longer.insert(longer.end(), more.begin(), more.end());
  ASSERT_TRUE(engine->Submit(longer, engine_steps::GreedyParams(1)).ok());
  RunAll(*engine);
  EXPECT_EQ(engine->TakePrefixCacheStats().hit_tokens, 0u);
  // The same 150 and 20 more: the first request's pattern again, which finds its 9 whole blocks.
  std::vector<int32_t> same_range(first);
  same_range.insert(same_range.end(), more.begin(), more.begin() + 20);
  ASSERT_TRUE(engine->Submit(same_range, engine_steps::GreedyParams(1)).ok());
  RunAll(*engine);
  EXPECT_EQ(engine->TakePrefixCacheStats().hit_tokens, 144u);

  // The worker's report: a prompt is looked up under its own length's seed.
  PublishedLoad published;
  published.Publish(*engine);
  EXPECT_EQ(published.CachedPrefixTokens(same_range, static_cast<int64_t>(same_range.size())), 160);
  // As if its client's prompt were shorter than 100 tokens: the base pattern's blocks, of which none is cached.
  EXPECT_EQ(published.CachedPrefixTokens(same_range, 50), 0);
  const CachedBlocksReport report = published.CachedBlocksSince(0, 0, 1 << 20);
  ASSERT_EQ(report.length_seeds.size(), 2u);
  EXPECT_EQ(report.length_seeds[0].min_prompt_tokens, 100);
  EXPECT_EQ(report.length_seeds[1].min_prompt_tokens, 200);
  EXPECT_EQ(report.seed, engine->prefix_seeds()[0]);
  EXPECT_EQ(report.length_seeds[1].seed, engine->prefix_seeds()[2]);
  EXPECT_NE(engine->prefix_seeds()[1], engine->prefix_seeds()[2]);
}

TEST(AdaptivePatternTest, AHandoffCarriesAndAcceptsOnlyItsPatternsIndexKeys) {
  auto prefill = MakeEngine(kBase, kRanges);
  auto decode = MakeEngine(kBase, kRanges);
  ASSERT_NE(prefill, nullptr);
  ASSERT_NE(decode, nullptr);
  const std::vector<int32_t> prompt = Tokens(120, 3);  // FFSSFSSS: index keys of layers 0, 1 and 4
  absl::StatusOr<RequestId> id = prefill->SubmitPrefill(prompt, engine_steps::GreedyParams(4));
  ASSERT_TRUE(id.ok()) << id.status();
  ASSERT_GE(engine_steps::RunPrefill(*prefill, *id).first_token, 0);
  absl::StatusOr<KvSegment> segment = prefill->ExportSegment(*id, 0, 120);
  ASSERT_TRUE(segment.ok()) << segment.status();
  std::vector<int32_t> key_layers;
  for (const KvSlice& slice : segment->slices()) {
    if (slice.kind == KvRowKind::kIndexKey) key_layers.push_back(slice.layer);
  }
  EXPECT_EQ(key_layers, (std::vector<int32_t>{0, 1, 4}));
  ASSERT_TRUE(segment->Wait().ok());

  absl::StatusOr<RequestId> import = decode->AdmitImport(prompt, engine_steps::GreedyParams(4));
  ASSERT_TRUE(import.ok()) << import.status();
  // Layer 2 runs Shared in this request's pattern although the engine holds a pool for it.
  std::string rows(segment->bytes(segment->slices().back()));  // layer 4's index keys
  const absl::Status refused =
      decode->ImportRows(*import, 2, KvRowKind::kIndexKey, 0, 120, LandedRows{.data = rows.data(), .size = rows.size()});
  EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(refused.message(), HasSubstr("FFSSFSSS runs that layer Shared"));
  // A probe of a layer the pattern runs Shared is refused the same way.
  IndexerProbe probe;
  probe.layer = 2;
  const absl::Status probe_refused = decode->VerifyProbes(*import, {probe});
  EXPECT_EQ(probe_refused.code(), absl::StatusCode::kInvalidArgument);
  decode->Release(*import);
  prefill->Release(*id);
}

// `score` and `perplexity` (Engine::ScoreChunks) run a prompt in the pattern its length picks.
TEST(AdaptivePatternTest, ScoringRunsThePatternOfThePromptsLength) {
  auto adaptive = MakeEngine(kBase, kRanges);
  auto alone = MakeEngine("FFSSFSSS", "");
  ASSERT_NE(adaptive, nullptr);
  ASSERT_NE(alone, nullptr);
  const std::vector<int32_t> ids = Tokens(150, 9);  // the 100-token range: FFSSFSSS
  auto logits = [&](Engine& engine) {
    std::vector<float> all;
    EXPECT_TRUE(engine
                    .ScoreChunks(ids, false,
                                 [&](int32_t, const ForwardResult& r) {
                                   all.insert(all.end(), r.logits.begin(), r.logits.end());
                                   return absl::OkStatus();
                                 })
                    .ok());
    return all;
  };
  EXPECT_EQ(logits(*adaptive), logits(*alone));
}

TEST(AdaptivePatternTest, MalformedRangesAreRefusedAtCreation) {
  EngineOptions o;
  o.model_dir = kBundled;
  o.length_patterns = "100:FSS";
  absl::StatusOr<std::unique_ptr<Engine>> engine = Engine::Create(o);
  ASSERT_FALSE(engine.ok());
  EXPECT_THAT(engine.status().message(), HasSubstr("length pattern '100:FSS'"));
}

}  // namespace
}  // namespace indexcache
