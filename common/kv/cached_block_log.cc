#include "common/kv/cached_block_log.h"

#include <algorithm>

namespace indexcache {

CachedBlockLog::CachedBlockLog(uint64_t epoch, size_t max_events) : epoch_(epoch), max_events_(max_events) {}

void CachedBlockLog::Reset(absl::Span<const uint64_t> keys) {
  keys_ = absl::flat_hash_set<uint64_t>(keys.begin(), keys.end());
  events_.clear();
  ++version_;
  first_version_ = version_;  // no reader can catch up on what came before: snapshots for all
}

void CachedBlockLog::Record(uint64_t key, bool stored) {
  if (stored) {
    keys_.insert(key);
  } else {
    keys_.erase(key);
  }
  events_.push_back(key);
  ++version_;
  if (events_.size() > max_events_) {
    events_.pop_front();
    ++first_version_;
  }
}

CachedBlocksUpdate CachedBlockLog::Since(uint64_t epoch, uint64_t version, size_t max_keys) const {
  CachedBlocksUpdate update;
  update.epoch = epoch_;
  update.version = version_;
  const bool follows = epoch == epoch_ && version >= first_version_ && version <= version_;
  if (follows && version_ - version <= max_keys) {
    update.since_version = version;
    // The net change: each key the events touched, by whether it is cached now. Disjoint lists, so
    // the reader applies them in any order.
    absl::flat_hash_set<uint64_t> touched;
    for (size_t i = version - first_version_; i < events_.size(); ++i) {
      const uint64_t key = events_[i];
      if (touched.insert(key).second) (keys_.contains(key) ? update.stored : update.removed).push_back(key);
    }
    return update;
  }
  update.snapshot = true;
  update.stored.reserve(std::min(keys_.size(), max_keys));
  for (uint64_t key : keys_) {
    if (update.stored.size() == max_keys) break;
    update.stored.push_back(key);
  }
  return update;
}

}  // namespace indexcache
