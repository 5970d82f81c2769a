#include "common/sampling/sampler.h"

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

using ::testing::HasSubstr;

constexpr float kInf = std::numeric_limits<float>::infinity();

// Logits whose softmax is `probs` (shifted by an arbitrary constant, which softmax ignores).
std::vector<float> LogitsOf(const std::vector<double>& probs) {
  std::vector<float> logits;
  for (const double p : probs)
    logits.push_back(p > 0 ? static_cast<float>(std::log(p) + 3.0) : -kInf);
  return logits;
}

std::vector<double> Normalized(std::vector<double> weights) {
  const double total = std::accumulate(weights.begin(), weights.end(), 0.0);
  for (double& w : weights) w /= total;
  return weights;
}

// The filtered distribution straight from the definitions (HF order), with a full sort: the
// independent truth the sampler's partial-sort implementation is compared against.
std::vector<double> ReferenceDistribution(const std::vector<float>& logits,
                                          const SamplingParams& params) {
  const size_t n = logits.size();
  double max_logit = -kInf;
  for (const float x : logits) {
    if (!std::isnan(x)) max_logit = std::max<double>(max_logit, x);
  }
  std::vector<double> p(n, 0.0);
  for (size_t i = 0; i < n; ++i) {
    if (!std::isnan(logits[i])) p[i] = std::exp((logits[i] - max_logit) / params.temperature);
  }
  p = Normalized(p);
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return p[a] > p[b]; });
  if (params.top_k > 0) {
    for (size_t r = params.top_k; r < n; ++r) p[order[r]] = 0.0;
    p = Normalized(p);
  }
  if (params.top_p < 1.0f) {
    double mass = 0.0;
    size_t r = 0;
    while (r < n && mass < params.top_p) mass += p[order[r++]];
    for (; r < n; ++r) p[order[r]] = 0.0;
    p = Normalized(p);
  }
  if (params.min_p > 0.0f) {
    const double p_max = *std::max_element(p.begin(), p.end());
    for (double& q : p) {
      if (q < params.min_p * p_max) q = 0.0;
    }
    p = Normalized(p);
  }
  return p;
}

// Draws `draws` tokens and compares the counts with `expected`: a token of probability 0 must never
// appear; the rest pass Pearson's chi-square test at significance 1e-4 (bins expecting fewer than
// 5 draws are pooled). The seed is fixed, so the outcome is deterministic, not flaky.
void ExpectDistribution(SamplingParams params, const std::vector<float>& logits,
                        const std::vector<double>& expected, int draws = 20000) {
  params.seed = 12345;
  auto sampler = Sampler::Create(params, static_cast<int32_t>(logits.size()), 0);
  ASSERT_TRUE(sampler.ok()) << sampler.status();
  std::vector<int> counts(logits.size(), 0);
  for (int d = 0; d < draws; ++d) {
    auto token = sampler->Sample(logits);
    ASSERT_TRUE(token.ok()) << token.status();
    ASSERT_GE(*token, 0);
    ASSERT_LT(*token, static_cast<int32_t>(logits.size()));
    ++counts[*token];
  }
  double chi2 = 0.0;
  int bins = 0;
  double pooled_expected = 0.0, pooled_observed = 0.0;
  for (size_t i = 0; i < logits.size(); ++i) {
    const double e = expected[i] * draws;
    if (expected[i] == 0.0) {
      EXPECT_EQ(counts[i], 0) << "token " << i << " has probability 0";
      continue;
    }
    if (e < 5.0) {
      pooled_expected += e;
      pooled_observed += counts[i];
      continue;
    }
    chi2 += (counts[i] - e) * (counts[i] - e) / e;
    ++bins;
  }
  if (pooled_expected > 0.0) {
    chi2 +=
        (pooled_observed - pooled_expected) * (pooled_observed - pooled_expected) / pooled_expected;
    ++bins;
  }
  if (bins < 2) return;  // a single possible outcome: the zero checks above said it all
  // Wilson-Hilferty approximation of the chi-square quantile; z = 3.719 is the normal 1 - 1e-4.
  const double df = bins - 1;
  const double a = 2.0 / (9.0 * df);
  const double critical = df * std::pow(1.0 - a + 3.719 * std::sqrt(a), 3);
  EXPECT_LT(chi2, critical) << "df " << df;
}

SamplingParams Params(float temperature, int32_t top_k = 0, float top_p = 1.0f,
                      float min_p = 0.0f) {
  SamplingParams params;
  params.temperature = temperature;
  params.top_k = top_k;
  params.top_p = top_p;
  params.min_p = min_p;
  return params;
}

TEST(SamplerTest, GreedyIsArgmaxWithLowestIdOnTies) {
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> small(-3, 3);  // small integers: ties are common
  auto sampler = Sampler::Create(Params(0.0f), 64, 0);
  ASSERT_TRUE(sampler.ok());
  for (int row = 0; row < 200; ++row) {
    std::vector<float> logits(64);
    for (float& x : logits) x = static_cast<float>(small(rng));
    const int32_t expected =
        static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    EXPECT_EQ(*sampler->Sample(logits), expected);
  }
}

TEST(SamplerTest, GreedyIgnoresNaN) {
  auto sampler = Sampler::Create(Params(0.0f), 4, 0);
  ASSERT_TRUE(sampler.ok());
  EXPECT_EQ(*sampler->Sample(std::vector<float>{std::nanf(""), 1.0f, 2.0f, std::nanf("")}), 2);
  EXPECT_EQ(*sampler->Sample(std::vector<float>{-kInf, std::nanf(""), -kInf, -5.0f}), 3);
}

TEST(SamplerTest, RefusesRowsWithoutUsableLogitOrOfWrongLength) {
  auto sampler = Sampler::Create(Params(1.0f), 3, 0);
  ASSERT_TRUE(sampler.ok());
  auto all_bad = sampler->Sample(std::vector<float>{std::nanf(""), -kInf, std::nanf("")});
  EXPECT_EQ(all_bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(all_bad.status().message(), HasSubstr("NaN or -inf"));
  auto short_row = sampler->Sample(std::vector<float>{1.0f, 2.0f});
  EXPECT_EQ(short_row.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(short_row.status().message(), HasSubstr("vocab_size 3"));
}

TEST(SamplerTest, CreateRefusesInvalidParams) {
  EXPECT_THAT(Sampler::Create(Params(-1.0f), 10, 0).status().message(), HasSubstr("temperature"));
  EXPECT_THAT(Sampler::Create(Params(1.0f, 0, 0.0f), 10, 0).status().message(), HasSubstr("top_p"));
  EXPECT_THAT(Sampler::Create(Params(1.0f), 0, 0).status().message(), HasSubstr("vocab_size"));
}

const std::vector<double> kProbs = {0.1, 0.2, 0.3, 0.4};

TEST(SamplerTest, TemperatureOneDrawsTheSoftmax) {
  ExpectDistribution(Params(1.0f), LogitsOf(kProbs), kProbs);
}

TEST(SamplerTest, TemperatureSharpensAndFlattens) {
  // softmax(log p / T) is proportional to p^(1/T).
  std::vector<double> squared, rooted;
  for (const double p : kProbs) {
    squared.push_back(p * p);
    rooted.push_back(std::sqrt(p));
  }
  ExpectDistribution(Params(0.5f), LogitsOf(kProbs), Normalized(squared));
  ExpectDistribution(Params(2.0f), LogitsOf(kProbs), Normalized(rooted));
}

TEST(SamplerTest, TopKKeepsTheKMostLikely) {
  ExpectDistribution(Params(1.0f, 2), LogitsOf(kProbs), {0.0, 0.0, 3.0 / 7, 4.0 / 7});
  ExpectDistribution(Params(1.0f, 1), LogitsOf(kProbs), {0.0, 0.0, 0.0, 1.0});
}

TEST(SamplerTest, TopKBreaksTiesTowardsLowerIds) {
  ExpectDistribution(Params(1.0f, 2), {2.0f, 1.0f, 2.0f, 2.0f}, {0.5, 0.0, 0.5, 0.0});
}

TEST(SamplerTest, TopPKeepsTheSmallestNucleus) {
  const std::vector<double> probs = {0.2, 0.4, 0.1, 0.3};
  // 0.4 + 0.3 = 0.7 >= 0.65 -> {0.4, 0.3}.
  ExpectDistribution(Params(1.0f, 0, 0.65f), LogitsOf(probs), {0.0, 4.0 / 7, 0.0, 3.0 / 7});
  // 0.4 + 0.3 < 0.75 <= 0.9 -> {0.4, 0.3, 0.2}.
  ExpectDistribution(Params(1.0f, 0, 0.75f), LogitsOf(probs), {2.0 / 9, 4.0 / 9, 0.0, 3.0 / 9});
}

TEST(SamplerTest, TinyTopPIsAlwaysTheArgmax) {
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  std::vector<float> logits(1000);
  for (float& x : logits) x = normal(rng);
  const int32_t argmax =
      static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
  auto sampler = Sampler::Create(Params(1.5f, 0, 1e-6f), 1000, 3);
  ASSERT_TRUE(sampler.ok());
  for (int d = 0; d < 500; ++d) EXPECT_EQ(*sampler->Sample(logits), argmax);
}

TEST(SamplerTest, MinPDropsTokensBelowAFractionOfTheMax) {
  // Threshold 0.4 * 0.4 = 0.16 drops the 0.1 token.
  ExpectDistribution(Params(1.0f, 0, 1.0f, 0.4f), LogitsOf(kProbs),
                     {0.0, 2.0 / 9, 3.0 / 9, 4.0 / 9});
  // min_p = 1 keeps only the max.
  ExpectDistribution(Params(1.0f, 0, 1.0f, 1.0f), LogitsOf(kProbs), {0.0, 0.0, 0.0, 1.0});
}

TEST(SamplerTest, TemperatureIsAppliedBeforeTopP) {
  // At T = 1, {0.4, 0.3} already hold 0.7 >= 0.65; at T = 2 (p ~ sqrt) they hold ~0.607, so the
  // nucleus must grow to three tokens.
  const std::vector<double> probs = {0.4, 0.3, 0.2, 0.1};
  ExpectDistribution(Params(1.0f, 0, 0.65f), LogitsOf(probs), {4.0 / 7, 3.0 / 7, 0.0, 0.0});
  const double a = std::sqrt(0.4), b = std::sqrt(0.3), c = std::sqrt(0.2);
  ExpectDistribution(Params(2.0f, 0, 0.65f), LogitsOf(probs),
                     {a / (a + b + c), b / (a + b + c), c / (a + b + c), 0.0});
}

TEST(SamplerTest, FiltersRunInHuggingFaceOrder) {
  // top-k 4 renormalises {.35,.25,.2,.1} by .9: {.389,.278,.222,.111}; top-p .6 keeps the first
  // two (.667); min-p .5 (threshold .175 of the original scale) keeps both: 7/12, 5/12.
  const std::vector<double> probs = {0.35, 0.25, 0.2, 0.1, 0.05, 0.05};
  ExpectDistribution(Params(1.0f, 4, 0.6f, 0.5f), LogitsOf(probs),
                     {7.0 / 12, 5.0 / 12, 0.0, 0.0, 0.0, 0.0});
  // top-p before min-p: top-p .6 keeps {.5,.3}; min-p .5 (threshold .25) keeps both. Applying
  // min-p first (vLLM V1) would keep {.625,.375} and then top-p only the first.
  ExpectDistribution(Params(1.0f, 0, 0.6f, 0.5f), LogitsOf({0.5, 0.3, 0.2}),
                     {5.0 / 8, 3.0 / 8, 0.0});
}

TEST(SamplerTest, RandomCombinationsMatchTheReference) {
  std::mt19937 rng(2024);
  std::normal_distribution<float> normal(0.0f, 1.5f);
  const SamplingParams cases[] = {Params(0.7f, 10),
                                  Params(1.3f, 0, 0.8f),
                                  Params(0.9f, 0, 1.0f, 0.1f),
                                  Params(1.0f, 20, 0.9f, 0.05f),
                                  Params(0.5f, 5, 0.95f),
                                  Params(2.0f, 0, 0.5f, 0.2f)};
  for (const SamplingParams& params : cases) {
    std::vector<float> logits(40);
    for (float& x : logits) x = normal(rng);
    logits[7] = std::nanf("");
    logits[13] = -kInf;
    SCOPED_TRACE(testing::Message() << "T " << params.temperature << " k " << params.top_k << " p "
                                    << params.top_p << " min_p " << params.min_p);
    ExpectDistribution(params, logits, ReferenceDistribution(logits, params));
  }
}

TEST(SamplerTest, TopKWithManyTiesMatchesTheReferenceForSmallAndLargeK) {
  // Logits on a coarse grid, so many tokens tie at the k-th value; small k takes the heap path,
  // large k the selection path, and both must keep the lowest-id ties.
  std::mt19937 rng(31);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  std::vector<float> logits(3000);
  for (float& x : logits) x = std::round(normal(rng));
  for (const int32_t k : {30, 1500, 2999}) {
    SCOPED_TRACE(testing::Message() << "top_k " << k);
    const SamplingParams params = Params(3.0f, k);
    ExpectDistribution(params, logits, ReferenceDistribution(logits, params));
  }
}

TEST(SamplerTest, LargeVocabularyMatchesTheReference) {
  constexpr int32_t kVocab = 151552;  // GLM's vocabulary size
  std::mt19937 rng(99);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::vector<float> logits(kVocab);
  for (float& x : logits) x = normal(rng);
  // top-p alone must sort only a prefix of the row, grown in chunks: check it across chunk edges.
  for (const SamplingParams& params : {Params(0.8f, 50, 0.9f, 0.02f), Params(0.6f, 0, 0.7f)}) {
    ExpectDistribution(params, logits, ReferenceDistribution(logits, params), 2000);
  }
}

TEST(SamplerTest, NaNIsNeverDrawnAndInfinityTakesAllTheMass) {
  const float nan = std::nanf("");
  ExpectDistribution(Params(1.0f), {nan, 0.0f, nan, std::log(3.0f)}, {0.0, 0.25, 0.0, 0.75});
  ExpectDistribution(Params(1.0f), {0.0f, kInf, 5.0f, kInf}, {0.0, 0.5, 0.0, 0.5});
}

std::vector<int32_t> DrawSequence(const SamplingParams& params, uint64_t fallback_seed, int n) {
  std::mt19937 rng(5);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  auto sampler = Sampler::Create(params, 1000, fallback_seed);
  std::vector<int32_t> tokens;
  for (int i = 0; i < n; ++i) {
    std::vector<float> logits(1000);
    for (float& x : logits) x = normal(rng);
    tokens.push_back(*sampler->Sample(logits));
  }
  return tokens;
}

TEST(SamplerTest, SameSeedReproducesDifferentSeedDiffers) {
  SamplingParams params = Params(1.0f, 0, 0.95f);
  params.seed = 42;
  EXPECT_EQ(DrawSequence(params, 1, 200), DrawSequence(params, 2, 200));  // fallback unused
  SamplingParams other = params;
  other.seed = 43;
  EXPECT_NE(DrawSequence(params, 1, 200), DrawSequence(other, 1, 200));
  // Without params.seed the fallback seeds the RNG exactly as an explicit seed would.
  SamplingParams unseeded = params;
  unseeded.seed.reset();
  EXPECT_EQ(DrawSequence(unseeded, 42, 200), DrawSequence(params, 7, 200));
  auto sampler = Sampler::Create(unseeded, 10, 77);
  EXPECT_EQ(sampler->seed(), 77u);
}

// Not a check: prints the per-token cost at GLM's vocabulary size for the record.
// At GLM-5's vocabulary (151,552 ids) the filters still hold draw by draw, checked against a
// selection computed here by sorting: greedy is the argmax, top-k draws come from the k largest
// logits, top-p draws from the smallest prefix of the sorted distribution reaching p.
TEST(SamplerTest, FiltersHoldAtFullVocabulary) {
  constexpr int32_t kVocab = 151552;
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::vector<float> logits(kVocab);
  for (float& x : logits) x = normal(rng);
  std::vector<int32_t> by_logit(kVocab);
  std::iota(by_logit.begin(), by_logit.end(), 0);
  std::sort(by_logit.begin(), by_logit.end(), [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });

  auto greedy = Sampler::Create(Params(0.0f), kVocab, 1);
  ASSERT_TRUE(greedy.ok());
  EXPECT_EQ(greedy->Sample(logits).value_or(-1), by_logit[0]);

  constexpr int32_t kTopK = 50;
  const std::vector<int32_t> top_k(by_logit.begin(), by_logit.begin() + kTopK);
  auto k_sampler = Sampler::Create(Params(1.0f, kTopK), kVocab, 2);
  ASSERT_TRUE(k_sampler.ok());
  for (int i = 0; i < 200; ++i) {
    EXPECT_THAT(top_k, ::testing::Contains(k_sampler->Sample(logits).value_or(-1)));
  }

  // The nucleus at temperature 0.7, p = 0.95, from the softmax in double.
  constexpr double kTemperature = 0.7, kTopP = 0.95;
  std::vector<double> probs(kVocab);
  double total = 0.0;
  for (int32_t r = 0; r < kVocab; ++r) {
    probs[r] = std::exp((logits[by_logit[r]] - logits[by_logit[0]]) / kTemperature);
    total += probs[r];
  }
  std::vector<int32_t> nucleus;
  for (double mass = 0.0; mass < kTopP * total && nucleus.size() < by_logit.size();) {
    mass += probs[nucleus.size()];
    nucleus.push_back(by_logit[nucleus.size()]);
  }
  // One more id of slack for float rounding at the boundary.
  nucleus.push_back(by_logit[nucleus.size()]);
  auto p_sampler = Sampler::Create(Params(kTemperature, 0, kTopP), kVocab, 3);
  ASSERT_TRUE(p_sampler.ok());
  for (int i = 0; i < 200; ++i) {
    EXPECT_THAT(nucleus, ::testing::Contains(p_sampler->Sample(logits).value_or(-1)));
  }
}

}  // namespace
}  // namespace indexcache
