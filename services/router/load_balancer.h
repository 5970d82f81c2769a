// Power of two choices (Mitzenmacher, "The Power of Two Choices in Randomized Load Balancing"): draw
// two distinct candidates uniformly at random and take the less loaded one. Unlike least-loaded, a
// burst of requests between two load reports does not all land on the one worker that looked idlest;
// unlike round robin, a worker that is behind gets fewer requests. With n candidates the most loaded
// one is never chosen (it loses every pair) and the least loaded one wins 2/n of the draws.
#pragma once

#include <cstddef>
#include <cstdint>
#include <random>
#include <tuple>

#include "absl/types/span.h"

namespace indexcache {

// A worker's load as compared by the balancer: lexicographic, lower is less loaded.
//   decode:  {running sequences (the router's own, plus others' from the last report), -free KV blocks}
//   prefill: {queued prefill work in FLOPs (common/model/prefill_cost.h), queued prompt tokens}
struct LoadKey {
  int64_t primary = 0;
  int64_t secondary = 0;
  friend bool operator<(const LoadKey& a, const LoadKey& b) {
    return std::tie(a.primary, a.secondary) < std::tie(b.primary, b.secondary);
  }
};

// Index of the chosen candidate; `loads` must not be empty. Ties go to the first draw, so they are
// broken at random too.
size_t PickPowerOfTwo(absl::Span<const LoadKey> loads, std::mt19937_64& rng);

}  // namespace indexcache
