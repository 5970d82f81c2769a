// What IndexCache saves, counted by the forward pass. "Runs" and "skips" count (layer, token) pairs:
// a Full layer runs its indexer once per token, a Shared layer skips it.
#pragma once

#include <cstdint>
#include <vector>

#include "common/model/reuse_overlap.h"

namespace indexcache {

struct IndexCacheStats {
  uint64_t indexer_runs = 0;
  uint64_t indexer_skips = 0;
  double indexer_flops = 0.0;    // projections + scores of the runs, counted analytically
  double indexer_seconds = 0.0;  // measured by the backend
  uint64_t index_key_bytes_not_stored = 0;  // Shared layers' index keys that were never written
  double forward_seconds = 0.0;  // whole forward passes, wall clock (the speedup estimate's denominator)
  // Reuse telemetry (reuse_overlap.h): passes that measured, and per layer the overlaps they found.
  uint64_t reuse_telemetry_passes = 0;
  ReuseOverlapByLayer reuse_overlap;
  // Requests admitted per pattern of an adaptive pattern (Engine::patterns(), base first).
  std::vector<uint64_t> pattern_requests;

  IndexCacheStats& operator+=(const IndexCacheStats& other) {
    indexer_runs += other.indexer_runs;
    indexer_skips += other.indexer_skips;
    indexer_flops += other.indexer_flops;
    indexer_seconds += other.indexer_seconds;
    index_key_bytes_not_stored += other.index_key_bytes_not_stored;
    forward_seconds += other.forward_seconds;
    reuse_telemetry_passes += other.reuse_telemetry_passes;
    Accumulate(other.reuse_overlap, reuse_overlap);
    if (pattern_requests.size() < other.pattern_requests.size()) pattern_requests.resize(other.pattern_requests.size());
    for (size_t p = 0; p < other.pattern_requests.size(); ++p) pattern_requests[p] += other.pattern_requests[p];
    return *this;
  }
};

}  // namespace indexcache
