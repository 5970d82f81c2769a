// A prompt as the router's prefix-aware placement sees it: the short keys of its leading full blocks
// under a worker's prefix-cache naming (seed and block size, common/kv/prefix_cache.h), and the
// modelled prefill work of its first n tokens. Keys are hashed once per naming and request, however
// many placements (retries, waits for room) the request goes through, and before the registry's lock
// is taken (WorkerRegistry::TryPlace). One thread at a time.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <utility>
#include <vector>

#include "absl/types/span.h"
#include "common/kv/prefix_cache.h"

namespace indexcache {

class PromptBlocks {
 public:
  // `work_of(n)`: the modelled prefill work of the first n tokens (common/model/prefill_cost.h);
  // null when the router has no model, and tokens then stand in for work.
  PromptBlocks(absl::Span<const int32_t> tokens, std::function<int64_t(int64_t)> work_of);

  int64_t num_tokens() const { return static_cast<int64_t>(tokens_.size()); }
  bool models_work() const { return work_of_ != nullptr; }
  int64_t WorkOf(int64_t tokens) const { return work_of_ ? work_of_(tokens) : tokens; }

  // The short keys of the blocks an engine would look up (PrefixCache::LookupShortKeys), hashed on
  // the first call for a naming.
  absl::Span<const uint64_t> KeysFor(const BlockKey& seed, int32_t block_size);
  // Those keys if KeysFor hashed them already, else null: for code under a lock, which must not hash.
  const std::vector<uint64_t>* HashedFor(const BlockKey& seed, int32_t block_size) const;

 private:
  const absl::Span<const int32_t> tokens_;
  const std::function<int64_t(int64_t)> work_of_;
  std::map<std::pair<BlockKey, int32_t>, std::vector<uint64_t>> keys_;  // by (seed, block size)
};

}  // namespace indexcache
