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

// Prefix-aware placement (Dynamo's KV router and llm-d's prefix scorer do the same in their units):
// a worker that holds a prompt's leading blocks in its prefix cache computes or receives less of it.
// Each candidate then carries the cost of placing the request there: its queued work plus the
// request's own, less the part of the request its cache saves (scaled by the router's overlap
// weight); see WorkerRegistry::TryPlace for the units.
struct Candidate {
  LoadKey load;
  int64_t cached_tokens = 0;  // of the prompt's leading tokens, held in the worker's prefix cache
  double cost = 0;            // read only when some candidate holds cached tokens
};

// Why a worker was chosen, for the router's metrics.
enum class RoutingBasis {
  kLoad,            // no candidate held any of the prompt: power of two choices on load
  kPrefix,          // the cheapest candidate holds the most of the prompt
  kLoadOverPrefix,  // a candidate held more of the prompt, but its load made it dearer
};
const char* RoutingBasisName(RoutingBasis basis);

struct Pick {
  size_t index = 0;
  RoutingBasis basis = RoutingBasis::kLoad;
};

// Power of two choices on load while no candidate holds any of the prompt; else the cheapest
// candidate, ties to the one holding more, then at random. The cheapest, not two random draws: a
// cached prefix is worth something only on the worker that holds it, and the ledger
// (worker_capacity.h) counts each placed request at once, so a burst still spreads. `candidates` must
// not be empty.
Pick PickWorker(absl::Span<const Candidate> candidates, std::mt19937_64& rng);

}  // namespace indexcache
