// Prefix-aware placement: the router follows each worker's cached blocks through its load reports
// (CachedBlockIndex over the worker's CachedBlockLog), names a prompt's blocks as the workers' engines
// do (PromptBlocks), and places a prompt on the worker holding its prefix unless load outweighs it.
#include <random>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "common/kv/cached_block_log.h"
#include "common/kv/prefix_cache.h"
#include "gtest/gtest.h"
#include "services/common/cached_blocks_proto.h"
#include "services/router/cached_block_index.h"
#include "services/router/prompt_blocks.h"
#include "services/router/worker_registry.h"
#include "tests/cluster_token_for_tests.h"

namespace indexcache {
namespace {

constexpr int32_t kBlockSize = 16;

BlockKey TestSeed() { return PrefixCache::Seed("fingerprint", "FSFS"); }
// The adaptive pool's pattern for prompts of at least 64 tokens ("64:FSSS").
BlockKey LongSeed() { return PrefixCache::Seed("fingerprint", "FSSS"); }

// The load report a worker whose cache follows `log` sends a router at `cursor`; `length_seeds` as an
// adaptive pattern's worker reports them.
v1::WorkerLoad ReportOf(const CachedBlockLog& log, const v1::CachedBlocksCursor& cursor,
                        std::vector<LengthSeed> length_seeds = {}) {
  const CachedBlocksReport report{.enabled = true,
                                  .seed = TestSeed(),
                                  .length_seeds = std::move(length_seeds),
                                  .block_size = kBlockSize,
                                  .update = log.Since(cursor.epoch(), cursor.version(), kMaxReportedCachedBlocks)};
  v1::WorkerLoad load;
  SetCachedBlocks(report, &load);
  return load;
}

std::vector<int32_t> Tokens(int n, int32_t first) {
  std::vector<int32_t> tokens(n);
  for (int i = 0; i < n; ++i) tokens[i] = first + i;
  return tokens;
}

// The short keys of `tokens`' full blocks, chained from `seed` independently of PromptBlocks.
std::vector<uint64_t> ChainKeys(const std::vector<int32_t>& tokens, int blocks, const BlockKey& seed = TestSeed()) {
  std::vector<uint64_t> keys;
  BlockKey key = seed;
  for (int i = 0; i < blocks; ++i) {
    key = PrefixCache::Chain(key, absl::MakeConstSpan(tokens).subspan(i * kBlockSize, kBlockSize));
    keys.push_back(PrefixCache::ShortKey(key));
  }
  return keys;
}

TEST(PrefixPlacementTest, TheIndexFollowsTheWorkersLogThroughLostAndCrossedReports) {
  std::mt19937_64 rng(5);
  CachedBlockLog log(/*epoch=*/1234, /*max_events=*/32);
  log.Reset({});
  absl::flat_hash_set<uint64_t> truth;
  CachedBlockIndex index;
  v1::CachedBlocksCursor stale;  // a cursor from an earlier answer, as a crossed heartbeat carries
  for (int round = 0; round < 200; ++round) {
    for (int i = static_cast<int>(rng() % 20); i > 0; --i) {
      const uint64_t key = rng() % 40;
      const bool stored = rng() % 2 == 0;
      log.Record(key, stored);
      stored ? (void)truth.insert(key) : (void)truth.erase(key);
    }
    if (rng() % 4 == 0) continue;  // lost
    // Now and then the worker answers an older cursor: the index must ignore that delta.
    const v1::CachedBlocksCursor asked = rng() % 5 == 0 ? stale : index.cursor();
    stale = index.cursor();
    index.Apply(ReportOf(log, asked).cached_blocks());
    if (asked.epoch() != stale.epoch() || asked.version() != stale.version()) continue;
    ASSERT_EQ(index.size(), truth.size()) << "round " << round;
    for (uint64_t key : truth) ASSERT_EQ(index.LeadingHits(std::vector<uint64_t>{key}), 1) << key;
  }
  // Whatever happened, the next exchange on the index's own cursor brings it up to date.
  index.Apply(ReportOf(log, index.cursor()).cached_blocks());
  EXPECT_EQ(index.size(), truth.size());
  EXPECT_EQ(index.block_size(), kBlockSize);
  EXPECT_EQ(index.SeedFor(1), TestSeed());
}

TEST(PrefixPlacementTest, APromptsBlocksAreTheFullOnesBeforeItsLastTokenChainedUnderTheSeed) {
  const std::vector<int32_t> prompt = Tokens(49, 100);  // 3 full blocks, then 1 token
  PromptBlocks blocks(prompt, nullptr);
  // 49 tokens: the engine computes the last one whatever is cached, so it looks up (49-1)/16 = 3.
  EXPECT_EQ(blocks.KeysFor(TestSeed(), kBlockSize), absl::MakeConstSpan(ChainKeys(prompt, 3)));
  const std::vector<int32_t> exact = Tokens(48, 100);  // 3 full blocks, the last holding the last token
  PromptBlocks exact_blocks(exact, nullptr);
  EXPECT_EQ(exact_blocks.KeysFor(TestSeed(), kBlockSize).size(), 2u);
  // Another model or pattern names other blocks.
  EXPECT_NE(blocks.KeysFor(PrefixCache::Seed("fingerprint", "FFFF"), kBlockSize)[0], ChainKeys(prompt, 1)[0]);
  // A worker holding blocks 0 and 2 but not 1 reuses only block 0.
  CachedBlockLog log(1, 100);
  const std::vector<uint64_t> keys = ChainKeys(prompt, 3);
  log.Reset({keys[0], keys[2]});
  CachedBlockIndex index;
  index.Apply(ReportOf(log, index.cursor()).cached_blocks());
  EXPECT_EQ(index.LeadingHits(blocks.KeysFor(TestSeed(), kBlockSize)), 1);
  EXPECT_EQ(blocks.WorkOf(20), 20);  // without a model, tokens stand in for work
}

class RegistryPlacementTest : public ::testing::Test {
 protected:
  // With one decode worker that reports nothing, unless the test adds its own.
  void MakeRegistry(double overlap_weight, bool add_decode = true) {
    RegistryOptions options;
    options.cluster_token = ::indexcache::testing::TestClusterToken();
    options.prefix_overlap_weight = overlap_weight;
    registry_ = std::make_unique<WorkerRegistry>(options);
    if (add_decode) {
      ASSERT_TRUE(Register("d0", v1::DECODE, v1::WorkerLoad()).ok());
    }
  }

  absl::Status Register(const std::string& id, v1::WorkerRole role, v1::WorkerLoad load,
                        const std::string& length_patterns = "") {
    v1::RegisterRequest request;
    request.set_length_patterns(length_patterns);
    request.set_worker_id(id);
    request.set_role(role);
    request.set_address("127.0.0.1:" + std::to_string(1000 + registry_->Workers().size()));
    request.set_model_fingerprint("fingerprint");
    request.set_index_pattern("FSFS");
    load.set_worker_id(id);
    *request.mutable_load() = std::move(load);
    return registry_->Register(request).status();
  }

  // A prefill worker whose cache holds `cached` and which has `queued_tokens` queued of others';
  // `adaptive`: one of a pool whose prompts of at least 64 tokens run another pattern ("64:FSSS").
  void AddPrefill(const std::string& id, const std::vector<uint64_t>& cached, int64_t queued_tokens,
                  bool adaptive = false) {
    CachedBlockLog log(std::hash<std::string>()(id), 100);
    log.Reset(cached);
    v1::WorkerLoad load = ReportOf(log, v1::CachedBlocksCursor(),
                                   adaptive ? std::vector<LengthSeed>{{64, LongSeed()}} : std::vector<LengthSeed>{});
    load.set_queued_prompt_tokens(queued_tokens);
    ASSERT_TRUE(Register(id, v1::PREFILL, std::move(load), adaptive ? "64:FSSS" : "").ok());
  }

  // A decode worker of 100 blocks of 16 tokens, `free` of them free, whose cache holds `cached`.
  void AddDecode(const std::string& id, const std::vector<uint64_t>& cached, int32_t free) {
    CachedBlockLog log(std::hash<std::string>()(id), 100);
    log.Reset(cached);
    v1::WorkerLoad load = ReportOf(log, v1::CachedBlocksCursor());
    load.set_kv_block_size(kBlockSize);
    load.set_total_kv_blocks(100);
    load.set_free_kv_blocks(free);
    ASSERT_TRUE(Register(id, v1::DECODE, std::move(load)).ok());
  }

  // `client_prompt_tokens`: a migrated request's prompt as its client sent it (0: all of `prompt`).
  Placement Place(const std::vector<int32_t>& prompt, int64_t client_prompt_tokens = 0) {
    PromptBlocks blocks(prompt, nullptr);
    const Demand demand{static_cast<int64_t>(prompt.size()), 8, 0, &blocks, client_prompt_tokens};
    absl::StatusOr<Placement> placement = registry_->TryPlace(demand, {}, {});
    EXPECT_TRUE(placement.ok()) << placement.status();
    EXPECT_TRUE(placement->placed());
    return *std::move(placement);
  }

  std::unique_ptr<WorkerRegistry> registry_;
};

TEST_F(RegistryPlacementTest, APromptGoesToThePrefillWorkerHoldingItsPrefix) {
  MakeRegistry(1.0);
  const std::vector<int32_t> prompt = Tokens(100, 7);  // 6 blocks looked up
  AddPrefill("p-cold", {}, 0);
  AddPrefill("p-warm", ChainKeys(prompt, 4), 0);
  for (int i = 0; i < 20; ++i) {  // not a lucky draw
    Placement placement = Place(prompt);
    EXPECT_EQ(placement.prefill->id(), "p-warm");
    EXPECT_EQ(placement.prefill_basis, RoutingBasis::kPrefix);
    EXPECT_EQ(placement.prefill_cached_tokens, 64);
    EXPECT_EQ(placement.decode_basis, RoutingBasis::kLoad);  // the decode worker reports no cache
  }
}

TEST_F(RegistryPlacementTest, LoadOutweighsAPrefixWorthLessThanTheQueueInFrontOfIt) {
  MakeRegistry(1.0);
  const std::vector<int32_t> prompt = Tokens(100, 7);
  // Without the model, tokens are the unit: the warm worker saves 64 tokens but has 500 queued.
  AddPrefill("p-cold", {}, 0);
  AddPrefill("p-warm", ChainKeys(prompt, 4), 500);
  Placement placement = Place(prompt);
  EXPECT_EQ(placement.prefill->id(), "p-cold");
  EXPECT_EQ(placement.prefill_basis, RoutingBasis::kLoadOverPrefix);
  EXPECT_EQ(placement.prefill_cached_tokens, 0);
}

TEST_F(RegistryPlacementTest, AnOverlapWeightOfZeroPlacesByLoadAlone) {
  MakeRegistry(0.0);
  const std::vector<int32_t> prompt = Tokens(100, 7);
  AddPrefill("p-cold", {}, 0);
  AddPrefill("p-warm", ChainKeys(prompt, 4), 0);
  int warm = 0;
  for (int i = 0; i < 200; ++i) {
    Placement placement = Place(prompt);
    EXPECT_EQ(placement.prefill_basis, RoutingBasis::kLoad);
    warm += placement.prefill->id() == "p-warm";
  }
  // Equal loads: the pair's first draw wins, so each worker gets about half.
  EXPECT_GT(warm, 60);
  EXPECT_LT(warm, 140);
}

TEST_F(RegistryPlacementTest, AnAdaptivePoolLooksEachPromptUpUnderThePatternItsLengthRuns) {
  MakeRegistry(1.0, /*add_decode=*/false);
  ASSERT_TRUE(Register("d0", v1::DECODE, v1::WorkerLoad(), "64:FSSS").ok());
  const std::vector<int32_t> prompt = Tokens(100, 7);  // 100 tokens: the long pattern's
  const std::vector<int32_t> short_prompt = Tokens(40, 7);  // its first 40: the base pattern's
  // The same tokens' blocks, cached under each pattern by one worker each.
  AddPrefill("p-base", ChainKeys(prompt, 4), 0, /*adaptive=*/true);
  AddPrefill("p-long", ChainKeys(prompt, 4, LongSeed()), 0, /*adaptive=*/true);
  {
    const Placement placement = Place(prompt);
    EXPECT_EQ(placement.prefill->id(), "p-long");
    EXPECT_EQ(placement.prefill_cached_tokens, 64);
  }
  {
    const Placement placement = Place(short_prompt);  // (40 - 1) / 16 = 2 blocks looked up
    EXPECT_EQ(placement.prefill->id(), "p-base");
    EXPECT_EQ(placement.prefill_cached_tokens, 32);
  }
  {
    // The same 100 tokens as a migrated request whose client sent 50 (then 50 were streamed): it keeps
    // the base pattern, so its blocks are the base seed's.
    const Placement placement = Place(prompt, /*client_prompt_tokens=*/50);
    EXPECT_EQ(placement.prefill->id(), "p-base");
    EXPECT_EQ(placement.prefill_cached_tokens, 64);
  }
  // A worker picking patterns by other lengths would run a request in another pattern than its peer.
  const absl::Status refused = Register("p-other", v1::PREFILL, v1::WorkerLoad(), "32:FSSS");
  EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Register("p-plain", v1::PREFILL, v1::WorkerLoad()).code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(RegistryPlacementTest, ADecodeWorkerHoldingThePrefixWinsUnlessItsBlocksAreFarMoreInUse) {
  const std::vector<int32_t> prompt = Tokens(100, 7);
  // In KV blocks, 7 needed (100 + 1 tokens): the holder, none in use, costs 0 + 7 - 4 cached = 3; the
  // other, 10 in use, 10 + 7 = 17.
  MakeRegistry(1.0, /*add_decode=*/false);
  AddPrefill("p0", {}, 0);
  AddDecode("d-warm", ChainKeys(prompt, 4), 100);
  AddDecode("d-cold", {}, 90);
  {
    const Placement placement = Place(prompt);
    EXPECT_EQ(placement.decode->id(), "d-warm");
    EXPECT_EQ(placement.decode_basis, RoutingBasis::kPrefix);
    EXPECT_EQ(placement.decode_cached_tokens, 64);
  }  // its leases go back to this registry before the next one replaces it
  // 80 blocks in use on the holder: 80 + 7 - 4 = 83 against the other's 0 + 7.
  MakeRegistry(1.0, /*add_decode=*/false);
  AddPrefill("p0", {}, 0);
  AddDecode("d-warm", ChainKeys(prompt, 4), 20);
  AddDecode("d-cold", {}, 100);
  const Placement placement = Place(prompt);
  EXPECT_EQ(placement.decode->id(), "d-cold");
  EXPECT_EQ(placement.decode_basis, RoutingBasis::kLoadOverPrefix);
}

}  // namespace
}  // namespace indexcache
