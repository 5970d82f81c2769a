// Power of two choices against its closed-form pick probabilities, and prefix-aware picks (PickWorker).
#include "services/router/load_balancer.h"

#include <vector>

#include "gtest/gtest.h"

namespace indexcache {
namespace {

std::vector<double> PickFrequencies(const std::vector<LoadKey>& loads, int draws) {
  std::mt19937_64 rng(1234);
  std::vector<int> counts(loads.size(), 0);
  for (int i = 0; i < draws; ++i) ++counts[PickPowerOfTwo(loads, rng)];
  std::vector<double> frequencies;
  for (int c : counts) frequencies.push_back(static_cast<double>(c) / draws);
  return frequencies;
}

TEST(LoadBalancerTest, ThreeWorkersOfDifferentLoads) {
  // Pairs drawn uniformly from {0,1,2}: the least loaded wins 2 of 3 pairs, the middle one 1 of 3,
  // the most loaded none, wherever they sit in the list.
  const std::vector<double> f = PickFrequencies({{8, 0}, {0, 0}, {4, 0}}, 30000);
  EXPECT_EQ(f[0], 0.0);
  EXPECT_NEAR(f[1], 2.0 / 3.0, 0.02);
  EXPECT_NEAR(f[2], 1.0 / 3.0, 0.02);
}

TEST(LoadBalancerTest, SecondaryKeyBreaksPrimaryTies) {
  // Equal running sequences: more free KV blocks (a more negative secondary key) wins.
  const std::vector<double> f = PickFrequencies({{2, -10}, {2, -50}}, 1000);
  EXPECT_EQ(f[1], 1.0);
}

TEST(LoadBalancerTest, FullTiesAreSharedEvenly) {
  const std::vector<double> f = PickFrequencies({{1, 0}, {1, 0}, {1, 0}, {1, 0}}, 40000);
  for (double p : f) EXPECT_NEAR(p, 0.25, 0.02);
}

TEST(LoadBalancerTest, SingleCandidate) {
  std::mt19937_64 rng(1);
  EXPECT_EQ(PickPowerOfTwo(std::vector<LoadKey>{{100, 0}}, rng), 0u);
}

TEST(LoadBalancerTest, WithManyWorkersTheMostLoadedIsNeverPicked) {
  // n = 10 with distinct loads: worker of rank r (0 = least loaded) wins iff drawn with a more loaded
  // one: P = 2 (n - 1 - r) / (n (n - 1)).
  std::vector<LoadKey> loads;
  for (int i = 0; i < 10; ++i) loads.push_back({(i * 7) % 10, 0});  // a permutation of 0..9
  const std::vector<double> f = PickFrequencies(loads, 90000);
  for (int i = 0; i < 10; ++i) {
    const int rank = static_cast<int>(loads[i].primary);
    EXPECT_NEAR(f[i], 2.0 * (9 - rank) / 90.0, 0.01) << "rank " << rank;
  }
}

TEST(LoadBalancerTest, WithoutCachedTokensPickWorkerIsPowerOfTwoOnLoad) {
  // Costs are ignored while no candidate holds any of the prompt: the same closed form as above.
  const std::vector<Candidate> candidates = {{{8, 0}, 0, -100}, {{0, 0}, 0, 50}, {{4, 0}, 0, 0}};
  std::mt19937_64 rng(99);
  std::vector<int> counts(3, 0);
  constexpr int kDraws = 30000;
  for (int i = 0; i < kDraws; ++i) {
    const Pick pick = PickWorker(candidates, rng);
    EXPECT_EQ(pick.basis, RoutingBasis::kLoad);
    ++counts[pick.index];
  }
  EXPECT_EQ(counts[0], 0);
  EXPECT_NEAR(static_cast<double>(counts[1]) / kDraws, 2.0 / 3.0, 0.02);
  EXPECT_NEAR(static_cast<double>(counts[2]) / kDraws, 1.0 / 3.0, 0.02);
}

TEST(LoadBalancerTest, TheCheapestCandidateWinsAndTheBasisSaysWhetherItHeldTheMost) {
  std::mt19937_64 rng(7);
  // The holder of the prefix is also the cheapest: a prefix decision.
  Pick pick = PickWorker(std::vector<Candidate>{{{5, 0}, 0, 10.0}, {{9, 0}, 64, 4.0}, {{1, 0}, 16, 8.0}}, rng);
  EXPECT_EQ(pick.index, 1u);
  EXPECT_EQ(pick.basis, RoutingBasis::kPrefix);
  // The holder of most of the prompt is too busy: the cheapest still wins, against the prefix.
  pick = PickWorker(std::vector<Candidate>{{{5, 0}, 0, 3.0}, {{9, 0}, 64, 4.0}}, rng);
  EXPECT_EQ(pick.index, 0u);
  EXPECT_EQ(pick.basis, RoutingBasis::kLoadOverPrefix);
}

TEST(LoadBalancerTest, EqualCostsGoToTheLargerCachedPrefixThenAtRandom) {
  std::mt19937_64 rng(11);
  const Pick pick = PickWorker(std::vector<Candidate>{{{0, 0}, 16, 5.0}, {{0, 0}, 32, 5.0}}, rng);
  EXPECT_EQ(pick.index, 1u);
  // Full ties (cost and cached tokens) are shared evenly among the tied candidates, never the others.
  const std::vector<Candidate> tied = {{{0, 0}, 32, 5.0}, {{0, 0}, 32, 9.0}, {{0, 0}, 32, 5.0}, {{0, 0}, 32, 5.0}};
  std::vector<int> counts(tied.size(), 0);
  constexpr int kDraws = 30000;
  for (int i = 0; i < kDraws; ++i) ++counts[PickWorker(tied, rng).index];
  EXPECT_EQ(counts[1], 0);
  for (size_t i : {0u, 2u, 3u}) EXPECT_NEAR(static_cast<double>(counts[i]) / kDraws, 1.0 / 3.0, 0.02) << i;
}

}  // namespace
}  // namespace indexcache
