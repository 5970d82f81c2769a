#include "common/sampling/sampler.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <functional>
#include <limits>

#include "absl/strings/str_format.h"
#include "common/util/status_macros.h"

namespace indexcache {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// NaN compares false, so this also rejects NaN: such tokens are never candidates.
bool Usable(float logit) { return logit > kNegInf; }

}  // namespace

absl::StatusOr<Sampler> Sampler::Create(const SamplingParams& params, int32_t vocab_size,
                                        uint64_t fallback_seed) {
  if (vocab_size < 1) {
    return absl::InvalidArgumentError(
        absl::StrFormat("sampler vocab_size must be >= 1, got %d", vocab_size));
  }
  RETURN_IF_ERROR(Validate(params, vocab_size));
  return Sampler(params, vocab_size, params.seed.value_or(fallback_seed));
}

uint64_t Sampler::RandomSeed() {
  std::random_device device;
  return (static_cast<uint64_t>(device()) << 32) ^ static_cast<uint64_t>(device());
}

Sampler::Sampler(const SamplingParams& params, int32_t vocab_size, uint64_t seed)
    : params_{params.temperature, params.top_k, params.top_p, params.min_p, 0},
      vocab_size_(vocab_size),
      seed_(seed),
      rng_(seed) {}

SamplingDraw Sampler::NextDraw() {
  SamplingDraw draw = params_;
  // The top 53 bits of one engine output: exactly a double's mantissa, built without
  // std::uniform_real_distribution (which differs between standard libraries).
  if (draw.temperature != 0.0f) draw.uniform_bits = rng_() >> 11;
  return draw;
}

void Sampler::SkipDraws(int64_t draws) {
  if (params_.temperature != 0.0f && draws > 0) rng_.discard(static_cast<unsigned long long>(draws));
}

absl::StatusOr<int32_t> Sampler::Sample(absl::Span<const float> logits) {
  if (logits.size() != static_cast<size_t>(vocab_size_)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "logits row has %d entries, expected vocab_size %d", logits.size(), vocab_size_));
  }
  return pipeline_.Run(logits, NextDraw());
}

absl::StatusOr<int32_t> SamplingPipeline::Run(absl::Span<const float> logits, const SamplingDraw& draw) {
  const int32_t vocab_size = static_cast<int32_t>(logits.size());
  // One pass for the max (first index on ties = greedy's answer) and the number of usable tokens.
  int32_t argmax = -1;
  float max_logit = kNegInf;
  int32_t num_usable = 0;
  for (int32_t i = 0; i < vocab_size; ++i) {
    const float x = logits[i];
    if (!Usable(x)) continue;
    ++num_usable;
    if (x > max_logit) {
      max_logit = x;
      argmax = i;
    }
  }
  if (num_usable == 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "logits row has no usable value: all %d entries are NaN or -inf", vocab_size));
  }
  if (draw.temperature == 0.0f) return argmax;

  CollectTopK(logits, num_usable, draw.top_k);

  // Softmax numerators relative to the max, so the max has weight exactly 1 and nothing overflows.
  // The product is formed in double (1/temperature can exceed float range), exp runs in float (the
  // weights need no more precision than the float logits they come from), sums are in double.
  const bool infinite_max = std::isinf(max_logit);
  const double inv_temperature = 1.0 / static_cast<double>(draw.temperature);
  double total_weight = 0.0;
  for (Candidate& c : candidates_) {
    if (infinite_max) {
      c.weight = c.logit == max_logit ? 1.0 : 0.0;
    } else {
      const double scaled = (static_cast<double>(c.logit) - max_logit) * inv_temperature;
      c.weight = std::exp(static_cast<float>(scaled));
    }
    total_weight += c.weight;
  }

  if (draw.top_p < 1.0f) {
    ApplyTopPAndMinP(total_weight, draw.top_p, draw.min_p);
  } else if (draw.min_p > 0.0f) {
    // p_i < min_p * p_max  <=>  weight_i < min_p, since the max has weight 1 in any normalisation.
    std::erase_if(candidates_, [&draw](const Candidate& c) { return c.weight < draw.min_p; });
  }

  // Inverse CDF over the kept tokens (canonical order, so the same u picks the same token
  // anywhere).
  double kept_weight = 0.0;
  for (const Candidate& c : candidates_) kept_weight += c.weight;
  const double u = Uniform(draw.uniform_bits) * kept_weight;
  double cumulative = 0.0;
  int32_t last_positive = -1;
  for (const Candidate& c : candidates_) {
    if (c.weight <= 0.0) continue;
    cumulative += c.weight;
    last_positive = c.id;
    if (u < cumulative) return c.id;
  }
  // Reached only when rounding puts u at the very top of the range: the last drawable token.
  return last_positive;
}

void SamplingPipeline::CollectTopK(absl::Span<const float> logits, int32_t num_usable, int32_t top_k) {
  candidates_.clear();
  const int32_t vocab_size = static_cast<int32_t>(logits.size());
  const int32_t k = (top_k > 0 && top_k < num_usable) ? top_k : num_usable;
  if (k == num_usable) {
    for (int32_t i = 0; i < vocab_size; ++i) {
      if (Usable(logits[i])) candidates_.push_back({i, logits[i], 0.0});
    }
    return;
  }
  // Find the k-th largest logit, then one pass in id order keeps every token above it and the
  // lowest-id ties with it: a set that does not depend on how the selection permutes its scratch.
  const float kth = KthLargest(logits, k);
  int32_t ties_left = k;
  for (const float x : logits) ties_left -= x > kth ? 1 : 0;
  for (int32_t i = 0; i < vocab_size; ++i) {
    const float x = logits[i];
    if (x > kth) {
      candidates_.push_back({i, x, 0.0});
    } else if (x == kth && ties_left > 0) {
      candidates_.push_back({i, x, 0.0});
      --ties_left;
    }
  }
}

float SamplingPipeline::KthLargest(absl::Span<const float> logits, int32_t k) {
  std::vector<float>& scratch = kth_scratch_;
  scratch.clear();
  if (k <= kHeapTopKLimit) {
    // A min-heap of the k largest so far: on a 150K row most logits lose to its top at a glance,
    // several times faster than a selection over the whole row.
    for (const float x : logits) {
      if (!Usable(x)) continue;
      if (scratch.size() < static_cast<size_t>(k)) {
        scratch.push_back(x);
        std::push_heap(scratch.begin(), scratch.end(), std::greater<float>());
      } else if (x > scratch.front()) {
        std::pop_heap(scratch.begin(), scratch.end(), std::greater<float>());
        scratch.back() = x;
        std::push_heap(scratch.begin(), scratch.end(), std::greater<float>());
      }
    }
    return scratch.front();
  }
  for (const float x : logits) {
    if (Usable(x)) scratch.push_back(x);
  }
  std::nth_element(scratch.begin(), scratch.begin() + (k - 1), scratch.end(),
                   std::greater<float>());
  return scratch[k - 1];
}

void SamplingPipeline::ApplyTopPAndMinP(double total_weight, float top_p, float min_p) {
  // Only the nucleus needs sorting. Bucket the weights by binary exponent (weight 1 -> bucket 0,
  // [1/2, 1) -> 1, ...), find the bucket where the mass from the top reaches top_p, and sort only
  // the tokens in or above it: the nucleus plus at most one factor-of-two band, not the whole row.
  constexpr int kBuckets = 64;
  const auto bucket_of = [](double weight) {
    // The biased IEEE-754 exponent field (1023 for [1, 2); 0 for zero and subnormals), read
    // directly: std::ilogb costs several times the rest of this pass.
    const int biased_exponent = static_cast<int>((std::bit_cast<uint64_t>(weight) >> 52) & 0x7ff);
    return std::min(kBuckets - 1, 1023 - biased_exponent);
  };
  const double target_mass = static_cast<double>(top_p) * total_weight;
  std::array<double, kBuckets> bucket_mass{};
  for (const Candidate& c : candidates_) bucket_mass[bucket_of(c.weight)] += c.weight;
  int last_bucket = 0;
  for (double mass = 0.0; last_bucket < kBuckets - 1; ++last_bucket) {
    mass += bucket_mass[last_bucket];
    if (mass >= target_mass) break;
  }
  const auto nucleus_end =
      std::partition(candidates_.begin(), candidates_.end(),
                     [&](const Candidate& c) { return bucket_of(c.weight) <= last_bucket; });
  // Most likely first; ids break ties so that the order is the same under every standard library.
  std::sort(candidates_.begin(), nucleus_end, [](const Candidate& a, const Candidate& b) {
    return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
  });
  const size_t n = static_cast<size_t>(nucleus_end - candidates_.begin());
  double mass = 0.0;
  for (size_t i = 0; i < n; ++i) {
    // min-p drops a suffix of this order too; index 0 (weight 1) always survives both filters.
    if (candidates_[i].weight < min_p) {
      candidates_.resize(i);
      return;
    }
    mass += candidates_[i].weight;
    if (mass >= target_mass) {
      candidates_.resize(i + 1);
      return;
    }
  }
  // Summed in another order the bucket masses may round past the target where this sum does not.
  candidates_.resize(n);
}

}  // namespace indexcache
