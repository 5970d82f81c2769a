// ComputeLogprobs against a float64 log-softmax written out here, on rows built to exercise its
// corners: ties (lower id first), NaN and -inf entries, +inf, top_n beyond the usable tokens.
#include "common/sampling/logprobs.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace indexcache {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

// log_softmax in double, the textbook way: log(exp(x_i) / Σ exp(x_j)) over the finite logits.
std::vector<double> ReferenceLogSoftmax(const std::vector<float>& logits) {
  double max = -INFINITY;
  for (float x : logits) {
    if (!std::isnan(x)) max = std::max<double>(max, x);
  }
  double sum = 0;
  for (float x : logits) sum += std::isnan(x) ? 0.0 : std::exp(static_cast<double>(x) - max);
  std::vector<double> out;
  for (float x : logits) out.push_back(std::isnan(x) ? -INFINITY : std::log(std::exp(static_cast<double>(x) - max) / sum));
  return out;
}

TEST(LogprobsTest, MatchesFloat64LogSoftmaxOnRandomRows) {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 4.0f);
  for (int trial = 0; trial < 20; ++trial) {
    std::vector<float> logits(1000);
    for (float& x : logits) x = normal(rng);
    const std::vector<double> want = ReferenceLogSoftmax(logits);
    std::vector<int32_t> order(logits.size());
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
    const int32_t chosen = trial * 37 % 1000;
    absl::StatusOr<TokenLogprobs> got = ComputeLogprobs(logits, chosen, 20);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->chosen.token, chosen);
    EXPECT_NEAR(got->chosen.logprob, want[chosen], 1e-5);
    ASSERT_EQ(got->top.size(), 20u);
    for (int k = 0; k < 20; ++k) {
      EXPECT_EQ(got->top[k].token, order[k]) << "rank " << k;
      EXPECT_NEAR(got->top[k].logprob, want[order[k]], 1e-5) << "rank " << k;
    }
  }
}

TEST(LogprobsTest, TiesGoToLowerIdsAndNanCountsAsMinusInfinity) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<float> logits = {1.0f, 3.0f, nan, 3.0f, -kInf, 2.0f};
  absl::StatusOr<TokenLogprobs> got = ComputeLogprobs(logits, 5, 6);
  ASSERT_TRUE(got.ok()) << got.status();
  const std::vector<double> want = ReferenceLogSoftmax(logits);
  std::vector<int32_t> ids;
  for (const TokenLogprob& t : got->top) ids.push_back(t.token);
  // 1 and 3 tie: 1 first. NaN (2) and -inf (4) rank last, in id order.
  EXPECT_THAT(ids, testing::ElementsAre(1, 3, 5, 0, 2, 4));
  EXPECT_NEAR(got->chosen.logprob, want[5], 1e-6);
  EXPECT_EQ(got->top[4].logprob, -kInf);
  EXPECT_EQ(got->top[5].logprob, -kInf);
}

TEST(LogprobsTest, TopZeroGivesOnlyTheChosenToken) {
  absl::StatusOr<TokenLogprobs> got = ComputeLogprobs(std::vector<float>{0.0f, 0.0f}, 1, 0);
  ASSERT_TRUE(got.ok());
  EXPECT_TRUE(got->top.empty());
  EXPECT_NEAR(got->chosen.logprob, std::log(0.5), 1e-7);
}

TEST(LogprobsTest, PlusInfinitySharesTheMass) {
  absl::StatusOr<TokenLogprobs> got = ComputeLogprobs(std::vector<float>{kInf, 5.0f, kInf}, 0, 3);
  ASSERT_TRUE(got.ok());
  EXPECT_NEAR(got->chosen.logprob, std::log(0.5), 1e-7);
  EXPECT_EQ(got->top[2].token, 1);
  EXPECT_EQ(got->top[2].logprob, -kInf);
}

TEST(LogprobsTest, RefusesWhatCannotBeComputed) {
  EXPECT_FALSE(ComputeLogprobs(std::vector<float>{-kInf, -kInf}, 0, 1).ok());
  EXPECT_FALSE(ComputeLogprobs(std::vector<float>{1.0f}, 1, 0).ok());
  EXPECT_FALSE(ComputeLogprobs(std::vector<float>{1.0f}, 0, kMaxTopLogprobs + 1).ok());
}

}  // namespace
}  // namespace indexcache
