// A worker's prefix-cache keys as a versioned log, so the router can follow them with small deltas
// (the router's prefix-aware placement, services/router/cached_block_index.h).
//
// Each block is named by its short key (PrefixCache::ShortKey). Every change — a block became
// findable (stored) or was evicted (removed) — is one event; `version` counts them. A reader that
// sends back the (epoch, version) it has applied gets the events after it, or the whole set when it
// fell behind the events still kept, never read this log (another epoch: the worker restarted), or
// the log was reset. Only the last `max_events` events are kept, so memory stays bounded however
// long a reader is away.
//
// Not thread-safe: the owner (PublishedLoad) locks around it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/types/span.h"
#include "common/kv/prefix_cache.h"

namespace indexcache {

// What a reader is sent: a delta (the net change since `since_version`: keys stored, keys removed,
// disjoint) or the whole set.
struct CachedBlocksUpdate {
  uint64_t epoch = 0;
  uint64_t version = 0;
  bool snapshot = false;
  uint64_t since_version = 0;
  std::vector<uint64_t> stored;   // snapshot: the whole set
  std::vector<uint64_t> removed;  // delta only
};

// An update with what names its keys: the chain's seed and the tokens per block.
// An adaptive pattern's (common/model/pattern_schedule.h) pattern for longer prompts: the blocks of
// prompts of at least min_prompt_tokens tokens chain from its own seed.
struct LengthSeed {
  int32_t min_prompt_tokens = 0;
  BlockKey seed{};
};

struct CachedBlocksReport {
  bool enabled = false;  // the worker keeps a prefix cache; nothing else is set without one
  BlockKey seed{};       // PrefixCache::Seed of the worker's model and (base) pattern
  std::vector<LengthSeed> length_seeds;  // by increasing threshold; empty: one pattern for all prompts
  int32_t block_size = 0;
  CachedBlocksUpdate update;
};

class CachedBlockLog {
 public:
  // `epoch` tells this log from any earlier one of the same worker (a random number in production).
  CachedBlockLog(uint64_t epoch, size_t max_events);

  // The whole set is now `keys`: every reader gets a snapshot next.
  void Reset(absl::Span<const uint64_t> keys);
  void Record(uint64_t key, bool stored);

  // What a reader that applied (epoch, version) needs next. At most `max_keys` keys go out: a longer
  // delta becomes a snapshot, and a snapshot is cut there (placement then sees part of the cache,
  // which is all it costs).
  CachedBlocksUpdate Since(uint64_t epoch, uint64_t version, size_t max_keys) const;

  bool Contains(uint64_t key) const { return keys_.contains(key); }
  uint64_t epoch() const { return epoch_; }
  uint64_t version() const { return version_; }
  size_t size() const { return keys_.size(); }

 private:
  const uint64_t epoch_;
  const size_t max_events_;
  uint64_t version_ = 0;
  uint64_t first_version_ = 0;  // the version before events_.front()
  absl::flat_hash_set<uint64_t> keys_;
  std::deque<uint64_t> events_;  // the key each kept event touched (Since reads its state from keys_)
};

}  // namespace indexcache
