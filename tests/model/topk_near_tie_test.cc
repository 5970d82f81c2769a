// The handoff integrity check's tie judge (common/model/topk_near_tie.h): two selections that differ
// only in keys tied with the k-th score pass, whatever the order; one that swaps in a key scoring
// clearly below the k-th is a corruption, named.
#include "common/model/topk_near_tie.h"

#include <algorithm>
#include <numeric>
#include <random>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace indexcache {
namespace {

using ::testing::HasSubstr;

constexpr int32_t kHeads = 4;
constexpr int32_t kDim = 8;
constexpr int32_t kKeys = 40;
constexpr int32_t kTopK = 10;

struct Case {
  IndexerProbe probe;
  std::vector<float> keys;
  std::vector<int32_t> ranked;  // positions by score, best first (computed here in double)
};

Case MakeCase(uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  Case c;
  c.probe.layer = 3;
  c.probe.query.resize(kHeads * kDim);
  for (float& v : c.probe.query) v = normal(rng);
  c.probe.head_weights = {0.5f, 1.0f, 0.25f, 0.75f};
  c.keys.resize(kKeys * kDim);
  for (float& v : c.keys) v = normal(rng);
  std::vector<double> score(kKeys, 0.0);
  for (int t = 0; t < kKeys; ++t) {
    for (int h = 0; h < kHeads; ++h) {
      double dot = 0;
      for (int d = 0; d < kDim; ++d) dot += double{c.probe.query[h * kDim + d]} * c.keys[t * kDim + d];
      score[t] += c.probe.head_weights[h] * std::max(dot, 0.0);
    }
  }
  c.ranked.resize(kKeys);
  std::iota(c.ranked.begin(), c.ranked.end(), 0);
  std::stable_sort(c.ranked.begin(), c.ranked.end(), [&](int a, int b) { return score[a] > score[b]; });
  return c;
}

TEST(TopKNearTieTest, ASwapBetweenKeysOfEqualScoreAtTheKthPlaceIsATie) {
  Case c = MakeCase(1);
  // The key just outside the top-k becomes an exact copy of the k-th: their scores tie exactly.
  const int32_t kth = c.ranked[kTopK - 1], outside = c.ranked[kTopK];
  std::copy_n(c.keys.begin() + kth * kDim, kDim, c.keys.begin() + outside * kDim);
  c.probe.topk.assign(c.ranked.begin(), c.ranked.begin() + kTopK);
  std::vector<int32_t> other = c.probe.topk;
  other.back() = outside;
  EXPECT_TRUE(CheckTopKDifferenceIsNearTie(c.probe, c.keys, kHeads, kDim, other).ok());
}

TEST(TopKNearTieTest, ASwapWithinRoundingOfTheKthScoreIsATie) {
  Case c = MakeCase(2);
  const int32_t kth = c.ranked[kTopK - 1], outside = c.ranked[kTopK];
  // A copy a few float ulps larger: the two scores differ by rounding, the order may go either way.
  for (int d = 0; d < kDim; ++d) c.keys[outside * kDim + d] = c.keys[kth * kDim + d] * (1.0f + 3e-7f);
  c.probe.topk.assign(c.ranked.begin(), c.ranked.begin() + kTopK);
  std::vector<int32_t> other = c.probe.topk;
  other.back() = outside;
  EXPECT_TRUE(CheckTopKDifferenceIsNearTie(c.probe, c.keys, kHeads, kDim, other).ok());
}

TEST(TopKNearTieTest, AKeyScoringClearlyBelowTheKthIsACorruption) {
  Case c = MakeCase(3);
  c.probe.topk.assign(c.ranked.begin(), c.ranked.begin() + kTopK);
  std::vector<int32_t> other = c.probe.topk;
  other.back() = c.ranked.back();  // the lowest-scoring key
  const absl::Status s = CheckTopKDifferenceIsNearTie(c.probe, c.keys, kHeads, kDim, other);
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(s.message(), HasSubstr("layer 3"));
  EXPECT_THAT(s.message(), HasSubstr("beyond"));
}

TEST(TopKNearTieTest, AKeyOutsideTheSequenceOrMismatchedSizesAreCorruptions) {
  Case c = MakeCase(4);
  c.probe.topk.assign(c.ranked.begin(), c.ranked.begin() + kTopK);
  std::vector<int32_t> other = c.probe.topk;
  other.back() = kKeys + 5;
  EXPECT_EQ(CheckTopKDifferenceIsNearTie(c.probe, c.keys, kHeads, kDim, other).code(), absl::StatusCode::kDataLoss);
  other.pop_back();
  EXPECT_EQ(CheckTopKDifferenceIsNearTie(c.probe, c.keys, kHeads, kDim, other).code(), absl::StatusCode::kDataLoss);
}

}  // namespace
}  // namespace indexcache
