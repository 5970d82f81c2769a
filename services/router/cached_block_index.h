// What the router knows of one worker's prefix cache: the short keys of its cached blocks
// (common/kv/prefix_cache.h), followed through the deltas its load reports carry
// (common/kv/cached_block_log.h), and how many of a prompt's leading blocks it holds.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/types/span.h"
#include "common/kv/cached_block_log.h"
#include "common/kv/prefix_cache.h"
#include "indexcache/v1/internal.pb.h"

namespace indexcache {

class CachedBlockIndex {
 public:
  // Applies one report. A delta that does not start where this index stands (a report lost, or one
  // that crossed the answer to the previous one) is ignored: the cursor this index answers with
  // makes the worker send the right delta, or the whole set, next.
  void Apply(const ::indexcache::v1::CachedBlocks& report);
  // The worker stopped reporting a cache (restarted with it off): nothing is cached any more.
  void Clear();
  // What to tell the worker it follows up to.
  ::indexcache::v1::CachedBlocksCursor cursor() const;

  // Whether the worker reported a cache at all; the seed and block size then name its keys.
  bool known() const { return block_size_ > 0; }
  // The chain start of a prompt of `prompt_tokens` tokens (as its client sent it): an adaptive
  // pattern's longer prompts run other patterns, whose blocks chain from seeds of their own.
  const BlockKey& SeedFor(int64_t prompt_tokens) const;
  int32_t block_size() const { return block_size_; }
  size_t size() const { return keys_.size(); }
  // How many of `keys` (a prompt's leading block keys under this seed and block size, in order) the
  // worker holds, counted from the first: its engine reuses no block after a missing one.
  int64_t LeadingHits(absl::Span<const uint64_t> keys) const;

 private:
  uint64_t epoch_ = 0;
  uint64_t version_ = 0;
  int32_t block_size_ = 0;
  BlockKey seed_{};
  std::vector<LengthSeed> length_seeds_;  // by increasing threshold
  absl::flat_hash_set<uint64_t> keys_;
};

}  // namespace indexcache
