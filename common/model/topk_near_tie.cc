#include "common/model/topk_near_tie.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_format.h"

namespace indexcache {
namespace {

// Two evaluations may each round the query to bf16 (2^-8 relative per term): see the header.
constexpr double kRoundingReach = 2.0 / 256.0;

}  // namespace

absl::Status CheckTopKDifferenceIsNearTie(const IndexerProbe& probe, absl::Span<const float> keys, int32_t heads,
                                          int32_t head_dim, absl::Span<const int32_t> recomputed) {
  const int64_t n = static_cast<int64_t>(keys.size()) / head_dim;
  if (static_cast<int64_t>(probe.query.size()) != int64_t{heads} * head_dim ||
      static_cast<int64_t>(probe.head_weights.size()) != heads || probe.topk.size() != recomputed.size() ||
      probe.topk.empty() || static_cast<int64_t>(probe.topk.size()) > n) {
    return absl::DataLossError(absl::StrFormat(
        "layer %d: the selections (%d and %d keys) cannot be compared over %d keys", probe.layer, probe.topk.size(),
        recomputed.size(), n));
  }
  std::vector<double> score(n, 0.0), magnitude(n, 0.0);
  for (int64_t t = 0; t < n; ++t) {
    const float* key = keys.data() + t * head_dim;
    for (int32_t h = 0; h < heads; ++h) {
      const float* q = probe.query.data() + int64_t{h} * head_dim;
      double dot = 0, size = 0;
      for (int32_t d = 0; d < head_dim; ++d) {
        const double term = static_cast<double>(q[d]) * key[d];
        dot += term;
        size += std::abs(term);
      }
      score[t] += probe.head_weights[h] * std::max(dot, 0.0);
      magnitude[t] += std::abs(probe.head_weights[h]) * size;
    }
  }
  std::vector<double> sorted = score;
  const size_t k = probe.topk.size();
  std::nth_element(sorted.begin(), sorted.begin() + (k - 1), sorted.end(), std::greater<double>());
  const double kth = sorted[k - 1];
  double kth_magnitude = 0;
  for (int64_t t = 0; t < n; ++t) {
    if (score[t] == kth) kth_magnitude = std::max(kth_magnitude, magnitude[t]);
  }
  const absl::flat_hash_set<int32_t> theirs(probe.topk.begin(), probe.topk.end());
  const absl::flat_hash_set<int32_t> ours(recomputed.begin(), recomputed.end());
  auto check = [&](int32_t key, const char* chosen_by) -> absl::Status {
    if (key < 0 || key >= n) {
      return absl::DataLossError(
          absl::StrFormat("layer %d: the %s selected key %d, outside the %d keys", probe.layer, chosen_by, key, n));
    }
    const double reach = kRoundingReach * std::max(magnitude[key], kth_magnitude);
    if (std::abs(score[key] - kth) > reach) {
      return absl::DataLossError(absl::StrFormat(
          "layer %d: key %d, selected only by the %s, scores %.9g against the k-th score %.9g: %.3g apart, beyond "
          "the %.3g rounding can explain",
          probe.layer, key, chosen_by, score[key], kth, std::abs(score[key] - kth), reach));
    }
    return absl::OkStatus();
  };
  for (int32_t key : probe.topk) {
    if (!ours.contains(key)) {
      if (absl::Status s = check(key, "prefill worker"); !s.ok()) return s;
    }
  }
  for (int32_t key : recomputed) {
    if (!theirs.contains(key)) {
      if (absl::Status s = check(key, "decode worker"); !s.ok()) return s;
    }
  }
  return absl::OkStatus();
}

}  // namespace indexcache
