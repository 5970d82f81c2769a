#include "services/router/load_balancer.h"

#include <algorithm>
#include <vector>

namespace indexcache {

size_t PickPowerOfTwo(absl::Span<const LoadKey> loads, std::mt19937_64& rng) {
  if (loads.size() < 2) return 0;
  std::uniform_int_distribution<size_t> first_draw(0, loads.size() - 1);
  std::uniform_int_distribution<size_t> second_draw(0, loads.size() - 2);
  const size_t a = first_draw(rng);
  size_t b = second_draw(rng);
  if (b >= a) ++b;  // uniform over the candidates other than `a`
  return loads[b] < loads[a] ? b : a;
}

const char* RoutingBasisName(RoutingBasis basis) {
  switch (basis) {
    case RoutingBasis::kLoad:
      return "load";
    case RoutingBasis::kPrefix:
      return "prefix";
    case RoutingBasis::kLoadOverPrefix:
      return "load_over_prefix";
  }
  return "unknown";
}

Pick PickWorker(absl::Span<const Candidate> candidates, std::mt19937_64& rng) {
  int64_t most_cached = 0;
  for (const Candidate& c : candidates) most_cached = std::max(most_cached, c.cached_tokens);
  if (most_cached == 0) {
    std::vector<LoadKey> loads;
    loads.reserve(candidates.size());
    for (const Candidate& c : candidates) loads.push_back(c.load);
    return {PickPowerOfTwo(loads, rng), RoutingBasis::kLoad};
  }
  size_t best = 0;
  int ties = 1;
  for (size_t i = 1; i < candidates.size(); ++i) {
    const Candidate& c = candidates[i];
    const Candidate& b = candidates[best];
    if (c.cost > b.cost || (c.cost == b.cost && c.cached_tokens < b.cached_tokens)) continue;
    if (c.cost < b.cost || c.cached_tokens > b.cached_tokens) {
      best = i;
      ties = 1;
    } else if (std::uniform_int_distribution<int>(0, ties++)(rng) == 0) {
      best = i;  // reservoir sampling: each of the tied candidates wins with equal chance
    }
  }
  const RoutingBasis basis =
      candidates[best].cached_tokens == most_cached ? RoutingBasis::kPrefix : RoutingBasis::kLoadOverPrefix;
  return {best, basis};
}

}  // namespace indexcache
