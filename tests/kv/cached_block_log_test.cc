// The cached-block log a worker reports to the router (common/kv/cached_block_log.h): a reader that
// applies every update it gets ends with the log's set, whether it got deltas or snapshots, and falls
// back to a snapshot whenever a delta cannot bring it up to date.
#include "common/kv/cached_block_log.h"

#include <random>

#include "absl/container/flat_hash_set.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace indexcache {
namespace {

using ::testing::UnorderedElementsAre;
using ::testing::UnorderedElementsAreArray;

// A reader as the router is one: it applies what it gets and answers with its cursor.
struct Reader {
  uint64_t epoch = 0;
  uint64_t version = 0;
  absl::flat_hash_set<uint64_t> keys;

  void Apply(const CachedBlocksUpdate& u) {
    if (u.snapshot) {
      keys = absl::flat_hash_set<uint64_t>(u.stored.begin(), u.stored.end());
    } else {
      ASSERT_EQ(u.epoch, epoch);
      ASSERT_EQ(u.since_version, version);
      for (uint64_t k : u.stored) keys.insert(k);
      for (uint64_t k : u.removed) keys.erase(k);
    }
    epoch = u.epoch;
    version = u.version;
  }
};

TEST(CachedBlockLogTest, ANewReaderGetsTheWholeSetThenDeltas) {
  CachedBlockLog log(/*epoch=*/42, /*max_events=*/100);
  log.Reset(std::vector<uint64_t>{1, 2, 3});
  Reader reader;
  const CachedBlocksUpdate first = log.Since(reader.epoch, reader.version, 1000);
  EXPECT_TRUE(first.snapshot);
  reader.Apply(first);
  EXPECT_THAT(reader.keys, UnorderedElementsAre(1, 2, 3));

  log.Record(4, /*stored=*/true);
  log.Record(2, /*stored=*/false);
  const CachedBlocksUpdate delta = log.Since(reader.epoch, reader.version, 1000);
  EXPECT_FALSE(delta.snapshot);
  EXPECT_THAT(delta.stored, UnorderedElementsAre(4));
  EXPECT_THAT(delta.removed, UnorderedElementsAre(2));
  reader.Apply(delta);
  EXPECT_THAT(reader.keys, UnorderedElementsAre(1, 3, 4));
  // Up to date: an empty delta.
  const CachedBlocksUpdate none = log.Since(reader.epoch, reader.version, 1000);
  EXPECT_FALSE(none.snapshot);
  EXPECT_TRUE(none.stored.empty() && none.removed.empty());
}

TEST(CachedBlockLogTest, ADeltaCarriesTheNetChangeOfAKeyTouchedTwice) {
  CachedBlockLog log(7, 100);
  log.Reset({});
  Reader reader;
  reader.Apply(log.Since(0, 0, 1000));
  log.Record(5, true);
  log.Record(5, false);  // stored, then evicted: gone
  log.Record(6, true);
  log.Record(6, false);
  log.Record(6, true);  // evicted, then computed again: cached
  const CachedBlocksUpdate delta = log.Since(reader.epoch, reader.version, 1000);
  EXPECT_THAT(delta.stored, UnorderedElementsAre(6));
  EXPECT_THAT(delta.removed, UnorderedElementsAre(5));
}

TEST(CachedBlockLogTest, AReaderTooFarBehindAnotherEpochOrAResetGetsASnapshot) {
  CachedBlockLog log(9, /*max_events=*/4);
  log.Reset({});
  Reader reader;
  reader.Apply(log.Since(0, 0, 1000));
  for (uint64_t k = 10; k < 16; ++k) log.Record(k, true);  // 6 events: 2 fell out of the log
  EXPECT_TRUE(log.Since(reader.epoch, reader.version, 1000).snapshot);
  reader.Apply(log.Since(reader.epoch, reader.version, 1000));
  EXPECT_THAT(reader.keys, UnorderedElementsAre(10, 11, 12, 13, 14, 15));
  // The same version under another epoch (the worker restarted) means nothing here.
  EXPECT_TRUE(log.Since(reader.epoch + 1, reader.version, 1000).snapshot);
  log.Reset(std::vector<uint64_t>{99});
  const CachedBlocksUpdate after_reset = log.Since(reader.epoch, reader.version, 1000);
  EXPECT_TRUE(after_reset.snapshot);
  EXPECT_THAT(after_reset.stored, UnorderedElementsAre(99));
}

TEST(CachedBlockLogTest, AnUpdateNeverCarriesMoreThanItsBound) {
  CachedBlockLog log(3, 1000);
  log.Reset({});
  Reader reader;
  reader.Apply(log.Since(0, 0, 1000));
  for (uint64_t k = 0; k < 10; ++k) log.Record(k, true);
  // Ten events past a bound of four: a snapshot, cut at four keys of the set.
  const CachedBlocksUpdate cut = log.Since(reader.epoch, reader.version, 4);
  EXPECT_TRUE(cut.snapshot);
  ASSERT_EQ(cut.stored.size(), 4u);
  for (uint64_t k : cut.stored) EXPECT_LT(k, 10u);
}

TEST(CachedBlockLogTest, AReaderFollowingRandomChangesEndsWithTheSameSet) {
  // Against an independent set: every change applied directly to `truth`.
  std::mt19937_64 rng(2026);
  CachedBlockLog log(11, /*max_events=*/64);
  absl::flat_hash_set<uint64_t> truth;
  log.Reset({});
  Reader reader;
  int snapshots = 0, deltas = 0;
  for (int round = 0; round < 300; ++round) {
    const int changes = static_cast<int>(rng() % 40);  // sometimes past the 64 kept events
    for (int i = 0; i < changes; ++i) {
      const uint64_t key = rng() % 50;
      const bool stored = rng() % 2 == 0;
      log.Record(key, stored);
      if (stored) {
        truth.insert(key);
      } else {
        truth.erase(key);
      }
    }
    if (rng() % 3 == 0) continue;  // this round's report was lost
    const CachedBlocksUpdate update = log.Since(reader.epoch, reader.version, 1000);
    ++(update.snapshot ? snapshots : deltas);
    reader.Apply(update);
    ASSERT_THAT(reader.keys, UnorderedElementsAreArray(truth.begin(), truth.end())) << "round " << round;
  }
  EXPECT_GT(snapshots, 1);  // both paths ran
  EXPECT_GT(deltas, 100);
}

}  // namespace
}  // namespace indexcache
