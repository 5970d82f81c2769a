// PrefixCache, the prefix index: keys against SHA-256 of the documented byte layout (digests made with
// Python's hashlib), the chain (a key names its whole prefix), model and pattern separation, reference
// counts, LRU order of idle blocks, eviction of idle blocks only, and the counters.
#include "common/kv/prefix_cache.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace indexcache {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;

std::string Hex(const BlockKey& key) {
  static const char kDigits[] = "0123456789abcdef";
  std::string out;
  for (uint8_t b : key) {
    out.push_back(kDigits[b >> 4]);
    out.push_back(kDigits[b & 15]);
  }
  return out;
}

// hashlib.sha256(b"indexcache prefix cache v1\0fp0123\0FSFS"), and then of that digest followed by
// the tokens 1, 2, 258 as little-endian int32.
TEST(PrefixCacheKeyTest, KeysAreSha256OfTheDocumentedBytes) {
  const BlockKey seed = PrefixCache::Seed("fp0123", "FSFS");
  EXPECT_EQ(Hex(seed), "2e2ad7d97a5c87b5f99d8129db0e523130b427e60134ba93a9e0f831f4e2889c");
  const std::vector<int32_t> tokens = {1, 2, 258};
  EXPECT_EQ(Hex(PrefixCache::Chain(seed, tokens)), "38ef85f87112e567a7f8e2573dc904e25448c5d5d29a82845634778a17243d62");
}

TEST(PrefixCacheKeyTest, AKeyNamesTheWholePrefixModelAndPattern) {
  const BlockKey seed = PrefixCache::Seed("fp", "FSFS");
  const std::vector<int32_t> a = {1, 2, 3, 4}, b = {5, 6, 7, 8}, c = {1, 2, 3, 5};
  // The same second block after different first blocks: different keys.
  EXPECT_NE(PrefixCache::Chain(PrefixCache::Chain(seed, a), b), PrefixCache::Chain(PrefixCache::Chain(seed, c), b));
  EXPECT_EQ(PrefixCache::Chain(PrefixCache::Chain(seed, a), b), PrefixCache::Chain(PrefixCache::Chain(seed, a), b));
  // Another pattern or model: nothing of the chain is shared.
  EXPECT_NE(PrefixCache::Chain(PrefixCache::Seed("fp", "FFFF"), a), PrefixCache::Chain(seed, a));
  EXPECT_NE(PrefixCache::Chain(PrefixCache::Seed("fq", "FSFS"), a), PrefixCache::Chain(seed, a));
  // The separator keeps a field boundary from moving unnoticed.
  EXPECT_NE(PrefixCache::Seed("fpF", "SFS"), PrefixCache::Seed("fp", "FSFS"));
}

// Keys of `blocks` consecutive blocks of 4 tokens starting at token `first` (block i: 4 tokens
// first + 4i …), under `seed`.
std::vector<BlockKey> Keys(const BlockKey& seed, int32_t first, int32_t blocks) {
  std::vector<BlockKey> keys;
  for (int32_t i = 0; i < blocks; ++i) {
    const int32_t t = first + 4 * i;
    const std::vector<int32_t> tokens = {t, t + 1, t + 2, t + 3};
    keys.push_back(PrefixCache::Chain(keys.empty() ? seed : keys.back(), tokens));
  }
  return keys;
}

// The engine's keys (ExtendChain, possibly in steps) and the placement's short keys
// (LookupShortKeys) are the chain Keys builds block by block; a prompt's last token is never looked
// up, so a prompt of whole blocks looks up all but its last.
TEST(PrefixCacheKeyTest, PromptKeysAreTheChainOfTheBlocksBeforeTheLastToken) {
  const BlockKey seed = PrefixCache::Seed("fp", "FSFS");
  std::vector<int32_t> prompt;
  for (int32_t t = 0; t < 14; ++t) prompt.push_back(t);  // blocks 0..2 full, 2 tokens of block 3
  const std::vector<BlockKey> expected = Keys(seed, 0, 3);

  std::vector<BlockKey> keys;
  PrefixCache::ExtendChain(seed, 4, prompt, 1, keys);
  PrefixCache::ExtendChain(seed, 4, prompt, 3, keys);
  EXPECT_EQ(keys, expected);

  EXPECT_EQ(PrefixCache::LookupBlocks(14, 4), 3);
  EXPECT_EQ(PrefixCache::LookupBlocks(12, 4), 2) << "the block holding the last token is computed";
  EXPECT_EQ(PrefixCache::LookupBlocks(1, 4), 0);
  EXPECT_EQ(PrefixCache::LookupBlocks(0, 4), 0);
  EXPECT_THAT(PrefixCache::LookupShortKeys(seed, 4, prompt),
              ElementsAre(PrefixCache::ShortKey(expected[0]), PrefixCache::ShortKey(expected[1]),
                          PrefixCache::ShortKey(expected[2])));
  EXPECT_THAT(PrefixCache::LookupShortKeys(seed, 4, absl::MakeConstSpan(prompt).first(12)),
              ElementsAre(PrefixCache::ShortKey(expected[0]), PrefixCache::ShortKey(expected[1])));
  EXPECT_THAT(PrefixCache::LookupShortKeys(seed, 4, {}), IsEmpty());
}

class PrefixCacheTest : public testing::Test {
 protected:
  const BlockKey seed_ = PrefixCache::Seed("fp", "FSFS");
  PrefixCache cache_{/*block_size=*/4};
};

TEST_F(PrefixCacheTest, AcquireFindsTheLongestCachedLeadingRun) {
  const std::vector<BlockKey> keys = Keys(seed_, 0, 4);
  ASSERT_TRUE(cache_.Register(keys[0], 10));
  ASSERT_TRUE(cache_.Register(keys[1], 11));
  ASSERT_TRUE(cache_.Register(keys[3], 13));  // block 2 is missing: block 3 cannot be reached
  EXPECT_THAT(cache_.Acquire(keys, 16), ElementsAre(10, 11));
  EXPECT_THAT(cache_.Acquire(Keys(seed_, 100, 2), 9), IsEmpty());
  const PrefixCacheStats stats = cache_.TakeStats();
  EXPECT_EQ(stats.queried_tokens, 25u);
  EXPECT_EQ(stats.queried_blocks, 6u);
  EXPECT_EQ(stats.hit_blocks, 2u);
  EXPECT_EQ(stats.hit_tokens, 8u);
  EXPECT_EQ(cache_.TakeStats().queried_tokens, 0u) << "TakeStats starts the counters again";
}

TEST_F(PrefixCacheTest, ADuplicateKeyOrBlockIsNotRegistered) {
  const std::vector<BlockKey> keys = Keys(seed_, 0, 2);
  EXPECT_TRUE(cache_.Register(keys[0], 1));
  EXPECT_FALSE(cache_.Register(keys[0], 2)) << "the second copy stays private";
  EXPECT_FALSE(cache_.Register(keys[1], 1)) << "a block has one key";
  EXPECT_EQ(cache_.num_blocks(), 1);
  EXPECT_FALSE(cache_.Drop(2)) << "an unregistered block is its holder's to free";
}

TEST_F(PrefixCacheTest, HeldBlocksAreNeverEvicted) {
  const std::vector<BlockKey> keys = Keys(seed_, 0, 2);
  ASSERT_TRUE(cache_.Register(keys[0], 1));  // held by its writer
  ASSERT_TRUE(cache_.Register(keys[1], 2));
  EXPECT_THAT(cache_.Acquire(keys, 8), ElementsAre(1, 2));  // and by a second sequence
  EXPECT_THAT(cache_.Evict(10), IsEmpty());
  EXPECT_TRUE(cache_.Drop(1));
  EXPECT_TRUE(cache_.Drop(2));
  EXPECT_THAT(cache_.Evict(10), IsEmpty()) << "the writer still holds both";
  EXPECT_EQ(cache_.num_idle(), 0);
  EXPECT_TRUE(cache_.Drop(2));
  EXPECT_EQ(cache_.num_idle(), 1);
  EXPECT_THAT(cache_.Evict(10), ElementsAre(2));
  EXPECT_TRUE(cache_.Drop(1));
  EXPECT_THAT(cache_.Evict(10), ElementsAre(1));
  EXPECT_EQ(cache_.num_blocks(), 0);
  EXPECT_EQ(cache_.TakeStats().evictions, 2u);
  EXPECT_THAT(cache_.Acquire(keys, 8), IsEmpty()) << "evicted blocks are forgotten";
}

TEST_F(PrefixCacheTest, IdleBlocksLeaveLeastRecentlyUsedFirst) {
  const std::vector<BlockKey> a = Keys(seed_, 0, 1), b = Keys(seed_, 50, 1), c = Keys(seed_, 90, 1);
  ASSERT_TRUE(cache_.Register(a[0], 1));
  ASSERT_TRUE(cache_.Register(b[0], 2));
  ASSERT_TRUE(cache_.Register(c[0], 3));
  cache_.Drop(2);
  cache_.Drop(1);
  cache_.Drop(3);  // idle order: 2, 1, 3
  // A hit takes block 2 out of the idle list; dropped again, it is the most recently used.
  EXPECT_THAT(cache_.Acquire(b, 4), ElementsAre(2));
  EXPECT_EQ(cache_.num_idle(), 2);
  cache_.Drop(2);  // idle order: 1, 3, 2
  EXPECT_THAT(cache_.Evict(1), ElementsAre(1));
  EXPECT_THAT(cache_.Evict(5), ElementsAre(3, 2));
  EXPECT_EQ(cache_.num_idle(), 0);
}

TEST_F(PrefixCacheTest, AnotherPatternNeverHits) {
  const std::vector<BlockKey> keys = Keys(seed_, 0, 3);
  for (int32_t i = 0; i < 3; ++i) ASSERT_TRUE(cache_.Register(keys[i], i));
  EXPECT_THAT(cache_.Acquire(Keys(PrefixCache::Seed("fp", "FFFF"), 0, 3), 12), IsEmpty());
  EXPECT_THAT(cache_.Acquire(Keys(PrefixCache::Seed("other model", "FSFS"), 0, 3), 12), IsEmpty());
  EXPECT_THAT(cache_.Acquire(keys, 12), ElementsAre(0, 1, 2));
}

}  // namespace
}  // namespace indexcache
