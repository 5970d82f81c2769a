#include "bench/prompts.h"

#include <algorithm>
#include <random>

namespace indexcache::bench {

std::vector<int32_t> RandomPrompt(int32_t length, int32_t vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> dist(0, std::max(0, vocab - 3));
  std::vector<int32_t> ids(static_cast<size_t>(std::max(0, length)));
  for (int32_t& id : ids) id = dist(rng);
  return ids;
}

}  // namespace indexcache::bench
