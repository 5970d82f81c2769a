// The engine's prefix cache: a request sharing a prefix with an earlier or running one computes only
// the rest, and every output equals, token for token, the same request on an engine without the cache
// (greedy and seeded sampling; one after another, side by side, under eviction, preemption and abort).
// Truths: a cold engine (--prefix-cache=false) for the tokens; the indexer counters for the tokens
// computed (each computed token runs the indexer once per Full layer, a cached one never); the cache's
// block counts for what is held, all of it free once every request is gone.
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/engine/engine.h"
#include "common/engine/published_load.h"
#include "gtest/gtest.h"
#include "tests/engine_steps.h"

namespace indexcache {
namespace {

const std::string kFreq2 = std::string(INDEXCACHE_TEST_DATA) + "/goldens/moe_freq2";  // F F S F S, vocab 256
constexpr int32_t kFullLayers = 3;
constexpr int32_t kBlock = 16;

std::unique_ptr<Engine> MakeEngine(bool prefix_cache, size_t kv_cache_bytes = size_t{4} << 20,
                                   int32_t max_batch_tokens = 512) {
  EngineOptions o;
  o.model_dir = kFreq2;
  o.num_threads = 2;
  o.kv_cache_bytes = kv_cache_bytes;
  o.block_size = kBlock;
  o.max_batch_tokens = max_batch_tokens;
  o.prefix_cache = prefix_cache;
  auto engine = Engine::Create(o);
  EXPECT_TRUE(engine.ok()) << engine.status();
  return engine.ok() ? std::move(*engine) : nullptr;
}

// `n` pseudo-random ids of the 256-token vocabulary, different for each `salt`.
std::vector<int32_t> Tokens(int32_t n, int32_t salt) {
  std::vector<int32_t> ids;
  for (int32_t i = 0; i < n; ++i) ids.push_back(3 + (i * 37 + salt * 101 + (i * i) % 13) % 250);
  return ids;
}

std::vector<int32_t> Concat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

SamplingParams Seeded(int32_t max_new_tokens, uint64_t seed) {
  SamplingParams p = engine_steps::GreedyParams(max_new_tokens);
  p.temperature = 0.9f;
  p.top_k = 40;
  p.seed = seed;
  return p;
}

// Steps until no request is left; each request's tokens, in order. `after_step` runs after each step.
std::map<RequestId, std::vector<int32_t>> RunAll(Engine& engine,
                                                 const std::function<void(int)>& after_step = nullptr) {
  std::map<RequestId, std::vector<int32_t>> out;
  for (int step = 0; engine.HasWork() && step < 10000; ++step) {
    auto events = engine.Step();
    EXPECT_TRUE(events.ok()) << events.status();
    if (!events.ok()) break;
    for (const TokenEvent& e : *events) {
      EXPECT_NE(e.finish, RequestFinish::kError) << e.error;
      if (e.token >= 0) out[e.request].push_back(e.token);
    }
    if (after_step) after_step(step);
  }
  return out;
}

// The tokens `prompt` gives on a fresh engine without the prefix cache.
std::vector<int32_t> Cold(const std::vector<int32_t>& prompt, const SamplingParams& params) {
  auto engine = MakeEngine(/*prefix_cache=*/false);
  if (engine == nullptr) return {};
  auto id = engine->Submit(prompt, params);
  EXPECT_TRUE(id.ok()) << id.status();
  return id.ok() ? RunAll(*engine)[*id] : std::vector<int32_t>{};
}

// Tokens the forward passes computed since the last call.
uint64_t ComputedTokens(Engine& engine) { return engine.TakeStats().indexer_runs / kFullLayers; }

// Every block free, and every cached block idle: no request holds anything.
void ExpectNothingHeld(const Engine& engine) {
  EXPECT_EQ(engine.cache().num_used_blocks(), 0);
  EXPECT_EQ(engine.cache().num_free_blocks(), engine.cache().num_blocks());
  EXPECT_EQ(engine.cache().num_idle_cached_blocks(), engine.cache().num_cached_blocks());
}

TEST(EnginePrefixCacheTest, ASharedPrefixIsComputedOnceWithTheSameOutput) {
  auto engine = MakeEngine(/*prefix_cache=*/true);
  ASSERT_NE(engine, nullptr);
  const std::vector<int32_t> prefix = Tokens(5 * kBlock, 1);
  const std::vector<int32_t> first = Concat(prefix, Tokens(10, 2)), second = Concat(prefix, Tokens(7, 3));
  constexpr int32_t kNew = 12;

  auto a = engine->Submit(first, engine_steps::GreedyParams(kNew));
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(RunAll(*engine)[*a], Cold(first, engine_steps::GreedyParams(kNew)));
  EXPECT_EQ(ComputedTokens(*engine), first.size() + kNew - 1);
  PrefixCacheStats stats = engine->TakePrefixCacheStats();
  EXPECT_EQ(stats.hit_tokens, 0u);
  EXPECT_EQ(stats.queried_tokens, first.size());
  // 90 prompt + 11 fed-back tokens = 101 positions: 6 full blocks.
  EXPECT_EQ(engine->cache().num_cached_blocks(), 6);

  auto b = engine->Submit(second, engine_steps::GreedyParams(kNew));
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(RunAll(*engine)[*b], Cold(second, engine_steps::GreedyParams(kNew)));
  // The 5 blocks of the shared prefix came from the cache; the 7 tokens after it were computed.
  EXPECT_EQ(ComputedTokens(*engine), 7u + kNew - 1);
  stats = engine->TakePrefixCacheStats();
  EXPECT_EQ(stats.queried_tokens, second.size());
  EXPECT_EQ(stats.queried_blocks, (second.size() - 1) / kBlock);
  EXPECT_EQ(stats.hit_blocks, 5u);
  EXPECT_EQ(stats.hit_tokens, 5u * kBlock);
  ExpectNothingHeld(*engine);
}

TEST(EnginePrefixCacheTest, TheLastPromptTokenIsAlwaysComputed) {
  auto engine = MakeEngine(/*prefix_cache=*/true);
  ASSERT_NE(engine, nullptr);
  const std::vector<int32_t> prompt = Tokens(4 * kBlock, 4);  // whole blocks only
  std::vector<std::vector<int32_t>> outputs;
  for (int i = 0; i < 2; ++i) {
    auto id = engine->Submit(prompt, engine_steps::GreedyParams(5));
    ASSERT_TRUE(id.ok()) << id.status();
    outputs.push_back(RunAll(*engine)[*id]);
  }
  EXPECT_EQ(outputs[0], Cold(prompt, engine_steps::GreedyParams(5)));
  EXPECT_EQ(outputs[1], outputs[0]);
  ComputedTokens(*engine);
  auto id = engine->Submit(prompt, engine_steps::GreedyParams(5));
  ASSERT_TRUE(id.ok());
  EXPECT_EQ(RunAll(*engine)[*id], outputs[0]);
  // Three blocks from the cache; the fourth holds the last prompt token, whose logits give token 1.
  EXPECT_EQ(ComputedTokens(*engine), kBlock + 4u);
}

TEST(EnginePrefixCacheTest, SeededSamplingIsTheSame) {
  auto engine = MakeEngine(/*prefix_cache=*/true);
  ASSERT_NE(engine, nullptr);
  const std::vector<int32_t> prefix = Tokens(3 * kBlock + 5, 5);
  for (int32_t i = 0; i < 3; ++i) {
    const std::vector<int32_t> prompt = Concat(prefix, Tokens(4 + i, 10 + i));
    auto id = engine->Submit(prompt, Seeded(16, 1234 + i));
    ASSERT_TRUE(id.ok()) << id.status();
    EXPECT_EQ(RunAll(*engine)[*id], Cold(prompt, Seeded(16, 1234 + i))) << "request " << i;
  }
  EXPECT_EQ(engine->TakePrefixCacheStats().hit_blocks, 2u * 3);
}

// Side by side: in small chunks the second request, looked up when it first gets to run, finds the
// blocks the first has computed by then; in one chunk both compute the prefix (the second copy stays
// private).
TEST(EnginePrefixCacheTest, ConcurrentRequestsSharingAPrefix) {
  const std::vector<int32_t> prefix = Tokens(6 * kBlock, 6);
  const std::vector<int32_t> first = Concat(prefix, Tokens(9, 7)), second = Concat(prefix, Tokens(3, 8));
  const std::vector<int32_t> want_first = Cold(first, engine_steps::GreedyParams(10)), want_second = Cold(second, engine_steps::GreedyParams(10));
  for (int32_t chunk : {32, 512}) {
    auto engine = MakeEngine(/*prefix_cache=*/true, size_t{4} << 20, chunk);
    ASSERT_NE(engine, nullptr);
    auto a = engine->Submit(first, engine_steps::GreedyParams(10));
    auto b = engine->Submit(second, engine_steps::GreedyParams(10));
    ASSERT_TRUE(a.ok() && b.ok());
    std::map<RequestId, std::vector<int32_t>> out = RunAll(*engine);
    EXPECT_EQ(out[*a], want_first) << "chunk " << chunk;
    EXPECT_EQ(out[*b], want_second) << "chunk " << chunk;
    const PrefixCacheStats stats = engine->TakePrefixCacheStats();
    if (chunk == 32) {
      EXPECT_GT(stats.hit_blocks, 0u);
      EXPECT_EQ(ComputedTokens(*engine), first.size() + second.size() - stats.hit_tokens + 2 * 9);
    } else {
      EXPECT_EQ(stats.hit_blocks, 0u);
    }
    ExpectNothingHeld(*engine);
  }
}

// A cache of 12 blocks: each request needs 5 to 7, so every new prefix evicts idle blocks of earlier
// ones, and a repeated prefix may or may not still be there; the outputs never change.
TEST(EnginePrefixCacheTest, EvictionUnderASmallBudgetKeepsOutputs) {
  auto probe = MakeEngine(/*prefix_cache=*/true);
  ASSERT_NE(probe, nullptr);
  const size_t budget = 12 * probe->cache().bytes_per_block();
  auto engine = MakeEngine(/*prefix_cache=*/true, budget);
  ASSERT_NE(engine, nullptr);
  ASSERT_EQ(engine->cache().num_blocks(), 12);
  std::vector<std::vector<int32_t>> prefixes;
  for (int32_t p = 0; p < 3; ++p) prefixes.push_back(Tokens(4 * kBlock + 3, 20 + p));
  uint64_t evictions = 0, hits = 0;
  for (int32_t round = 0; round < 2; ++round) {
    for (int32_t p : {0, 1, 0, 2, 1, 2}) {
      const std::vector<int32_t> prompt = Concat(prefixes[p], Tokens(5 + round, 30 + p));
      auto id = engine->Submit(prompt, engine_steps::GreedyParams(20));
      ASSERT_TRUE(id.ok()) << id.status();
      EXPECT_EQ(RunAll(*engine)[*id], Cold(prompt, engine_steps::GreedyParams(20))) << "round " << round << " prefix " << p;
      const PrefixCacheStats stats = engine->TakePrefixCacheStats();
      evictions += stats.evictions;
      hits += stats.hit_blocks;
      EXPECT_LE(engine->cache().num_cached_blocks(), 12);
    }
  }
  EXPECT_GT(evictions, 0u);
  EXPECT_GT(hits, 0u);
  ExpectNothingHeld(*engine);
}

// Two requests on one shared prefix in a cache too small for both to finish side by side: the newer
// one is preempted (dropping its references, not the blocks the older one holds) and prefilled again,
// finding the prefix still cached; a third is aborted while it holds shared blocks.
TEST(EnginePrefixCacheTest, PreemptionAndAbortFreeNothingAnotherRequestUses) {
  auto probe = MakeEngine(/*prefix_cache=*/true);
  ASSERT_NE(probe, nullptr);
  auto engine = MakeEngine(/*prefix_cache=*/true, 10 * probe->cache().bytes_per_block());
  ASSERT_NE(engine, nullptr);
  const std::vector<int32_t> prefix = Tokens(3 * kBlock, 40);
  const std::vector<int32_t> first = Concat(prefix, Tokens(5, 41)), second = Concat(prefix, Tokens(8, 42));
  const std::vector<int32_t> third = Concat(prefix, Tokens(2, 43));
  // Warm the prefix, so all three start from the same cached blocks.
  auto warm = engine->Submit(prefix, engine_steps::GreedyParams(1));
  ASSERT_TRUE(warm.ok());
  RunAll(*engine);

  auto a = engine->Submit(first, engine_steps::GreedyParams(60));   // 53 + 60 positions: 8 blocks, 5 of its own
  auto b = engine->Submit(second, engine_steps::GreedyParams(60));  // cannot also grow to 8 in the 10 blocks
  auto c = engine->Submit(third, engine_steps::GreedyParams(60));
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  bool aborted = false;
  std::map<RequestId, std::vector<int32_t>> out = RunAll(*engine, [&](int step) {
    if (step == 2) {
      engine->Abort(*c);
      aborted = true;
    }
  });
  ASSERT_TRUE(aborted);
  EXPECT_EQ(out[*a], Cold(first, engine_steps::GreedyParams(60)));
  EXPECT_EQ(out[*b], Cold(second, engine_steps::GreedyParams(60)));
  EXPECT_LT(out[*c].size(), 60u);
  EXPECT_GE(engine->TakePrefixCacheStats().hit_blocks, 3u * 3) << "each lookup found the warmed prefix";
  ExpectNothingHeld(*engine);
  // Every block can be allocated again: a request needing the whole cache evicts every idle block.
  auto whole = engine->Submit(Tokens(10 * kBlock - 4, 44), engine_steps::GreedyParams(4));
  ASSERT_TRUE(whole.ok()) << whole.status();
  EXPECT_EQ(RunAll(*engine)[*whole].size(), 4u);
  ExpectNothingHeld(*engine);
}

TEST(EnginePrefixCacheTest, OffMeansNoLookupAndNoSharing) {
  auto engine = MakeEngine(/*prefix_cache=*/false);
  ASSERT_NE(engine, nullptr);
  const std::vector<int32_t> prompt = Tokens(3 * kBlock + 2, 50);
  for (int i = 0; i < 2; ++i) {
    auto id = engine->Submit(prompt, engine_steps::GreedyParams(3));
    ASSERT_TRUE(id.ok());
    RunAll(*engine);
    EXPECT_EQ(ComputedTokens(*engine), prompt.size() + 2);
  }
  const PrefixCacheStats stats = engine->TakePrefixCacheStats();
  EXPECT_EQ(stats.queried_tokens, 0u);
  EXPECT_EQ(engine->cache().num_cached_blocks(), 0);
}

TEST(EnginePrefixCacheTest, PublishedKeysTellWhatTheEngineWillFindAndEveryChangeIsAnnounced) {
  // What the worker reports to the router (published_load.h) against the engine's own lookup.
  auto engine = MakeEngine(/*prefix_cache=*/true);
  ASSERT_NE(engine, nullptr);
  PublishedLoad published;
  int announced = 0;
  published.OnCachedBlocksChanged([&] { ++announced; });
  published.Publish(*engine);  // starts following the (empty) cache
  EXPECT_EQ(announced, 1);
  const std::vector<int32_t> first = Tokens(100, 1);
  ASSERT_TRUE(engine->Submit(first, engine_steps::GreedyParams(2)).ok());
  RunAll(*engine, [&](int) { published.Publish(*engine); });
  EXPECT_GT(announced, 1);
  const int before = announced;
  published.Publish(*engine);  // nothing changed since
  EXPECT_EQ(announced, before);
  // 80 shared tokens: 5 whole blocks. The report says so before the engine looks the prompt up.
  const std::vector<int32_t> second = Concat(std::vector<int32_t>(first.begin(), first.begin() + 80), Tokens(30, 2));
  EXPECT_EQ(published.CachedPrefixTokens(second, static_cast<int64_t>(second.size())), 80);
  EXPECT_EQ(published.CachedPrefixTokens(Tokens(50, 3), 50), 0);
  engine->TakePrefixCacheStats();
  ASSERT_TRUE(engine->Submit(second, engine_steps::GreedyParams(2)).ok());
  RunAll(*engine);
  EXPECT_EQ(engine->TakePrefixCacheStats().hit_tokens, 80u);
  // A reader following from scratch gets every block findable as of the last Publish.
  published.Publish(*engine);
  const CachedBlocksReport report = published.CachedBlocksSince(0, 0, 1 << 20);
  EXPECT_TRUE(report.enabled);
  EXPECT_TRUE(report.update.snapshot);
  EXPECT_EQ(static_cast<int32_t>(report.update.stored.size()), engine->cache().num_cached_blocks());
  EXPECT_EQ(report.block_size, kBlock);
}

TEST(EnginePrefixCacheTest, WithoutTheCacheNothingIsPublished) {
  auto engine = MakeEngine(/*prefix_cache=*/false);
  ASSERT_NE(engine, nullptr);
  PublishedLoad published;
  published.Publish(*engine);
  EXPECT_FALSE(published.CachedBlocksSince(0, 0, 100).enabled);
  EXPECT_EQ(published.CachedPrefixTokens(Tokens(100, 1), 100), 0);
}

}  // namespace
}  // namespace indexcache
