// Power of two choices against its closed-form pick probabilities.
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

}  // namespace
}  // namespace indexcache
