// How well a Shared layer's reused selection matches the one its own indexer would make, per query row:
//   overlap = |reused top-k ∩ fresh top-k| / |fresh top-k|
// over the valid (non-negative) positions of both rows. Rows whose context holds at most index_topk
// keys are never counted: both selections are then the whole context and agree by construction.
// Aggregated per layer into the buckets of a Prometheus histogram (the worker's
// indexcache_reuse_topk_overlap), a sum and a row count.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <vector>

#include "absl/types/span.h"

namespace indexcache {

// Upper bounds of the histogram's buckets (cumulative in Prometheus, "le"); the top bucket is 1.
// Finer near 1, where adjacent layers of a well-chosen pattern sit (the paper: 70–100%).
inline constexpr std::array<double, 12> kReuseOverlapBuckets = {0.1, 0.2, 0.3, 0.4, 0.5, 0.6,
                                                                0.7, 0.8, 0.9, 0.95, 0.99, 1.0};

struct ReuseOverlap {
  uint64_t rows = 0;
  double sum = 0.0;  // Σ overlap over the rows
  // Rows per bucket, not cumulative: buckets[i] counts overlaps in (bound[i-1], bound[i]].
  std::array<uint64_t, kReuseOverlapBuckets.size()> buckets{};

  void Add(double overlap) {
    ++rows;
    sum += overlap;
    // The first bound at or above the value; the bounds end at 1, which no overlap exceeds.
    const auto bound = std::lower_bound(kReuseOverlapBuckets.begin(), kReuseOverlapBuckets.end(), overlap);
    ++buckets[std::min<size_t>(bound - kReuseOverlapBuckets.begin(), buckets.size() - 1)];
  }
  ReuseOverlap& operator+=(const ReuseOverlap& other) {
    rows += other.rows;
    sum += other.sum;
    for (size_t i = 0; i < buckets.size(); ++i) buckets[i] += other.buckets[i];
    return *this;
  }
};

// Per layer of the model; a layer never measured stays at zero rows. Header-only, like
// IndexCacheStats, which carries it to services that do not link the model.
using ReuseOverlapByLayer = std::vector<ReuseOverlap>;
inline void Accumulate(const ReuseOverlapByLayer& from, ReuseOverlapByLayer& into) {
  if (into.size() < from.size()) into.resize(from.size());
  for (size_t l = 0; l < from.size(); ++l) into[l] += from[l];
}

// The overlap of one row: `reused` and `fresh` hold positions below mark.size(), -1 padded. `mark` is
// scratch the caller keeps between rows (filled with -1 once), so a row costs O(k), not a sort;
// `row_id` (>= 0) must differ from every earlier call's on the same `mark`. An empty fresh selection
// agrees fully.
double RowOverlap(absl::Span<const int32_t> reused, absl::Span<const int32_t> fresh, int64_t row_id,
                  std::vector<int64_t>& mark);

}  // namespace indexcache
