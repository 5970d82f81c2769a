#include "common/sampling/logprobs.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/str_format.h"

namespace indexcache {
namespace {

// NaN reads as -inf, so that it is neither the maximum nor an alternative.
double Usable(float logit) { return std::isnan(logit) ? -std::numeric_limits<double>::infinity() : logit; }

}  // namespace

absl::StatusOr<TokenLogprobs> ComputeLogprobs(absl::Span<const float> logits, int32_t chosen, int32_t top_n) {
  const int64_t vocab = static_cast<int64_t>(logits.size());
  if (chosen < 0 || chosen >= vocab) {
    return absl::InvalidArgumentError(absl::StrFormat("token %d is outside the %d logits", chosen, vocab));
  }
  if (top_n < 0 || top_n > kMaxTopLogprobs) {
    return absl::InvalidArgumentError(absl::StrFormat("top_logprobs must be in [0, %d], got %d", kMaxTopLogprobs, top_n));
  }
  double max = -std::numeric_limits<double>::infinity();
  for (float logit : logits) max = std::max(max, Usable(logit));
  if (max == -std::numeric_limits<double>::infinity()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("logits row has no usable value: all %d entries are NaN or -inf", vocab));
  }
  // log_softmax(x)_i = x_i - (max + log Σ exp(x_j - max)). A +inf maximum gives every +inf token
  // log(1/count) and every other -inf, the limit of a huge logit (the sampler's reading too).
  double log_norm;
  if (std::isinf(max)) {
    const auto count = std::count_if(logits.begin(), logits.end(), [](float x) { return std::isinf(x) && x > 0; });
    log_norm = std::log(static_cast<double>(count));
  } else {
    double sum = 0.0;
    for (float logit : logits) sum += std::exp(Usable(logit) - max);
    log_norm = std::log(sum);
  }
  const auto logprob = [&](int32_t id) -> float {
    const double x = Usable(logits[id]);
    if (std::isinf(max)) return std::isinf(x) && x > 0 ? static_cast<float>(-log_norm) : -INFINITY;
    return static_cast<float>(x - max - log_norm);
  };
  TokenLogprobs out;
  out.chosen = {chosen, logprob(chosen)};
  // The top_n largest by (logit desc, id asc): a bounded scan, since top_n ≤ 20 is tiny beside the vocabulary.
  const auto better = [&](int32_t a, int32_t b) {
    const double la = Usable(logits[a]), lb = Usable(logits[b]);
    return la != lb ? la > lb : a < b;
  };
  std::vector<int32_t> best;
  best.reserve(top_n + 1);
  for (int32_t id = 0; id < vocab && top_n > 0; ++id) {
    if (best.size() == static_cast<size_t>(top_n) && !better(id, best.back())) continue;
    best.insert(std::upper_bound(best.begin(), best.end(), id, better), id);
    if (best.size() > static_cast<size_t>(top_n)) best.pop_back();
  }
  for (int32_t id : best) out.top.push_back({id, logprob(id)});
  return out;
}

}  // namespace indexcache
