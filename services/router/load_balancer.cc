#include "services/router/load_balancer.h"

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

}  // namespace indexcache
