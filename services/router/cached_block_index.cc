#include "services/router/cached_block_index.h"

#include <algorithm>

namespace indexcache {

void CachedBlockIndex::Apply(const ::indexcache::v1::CachedBlocks& report) {
  if (report.block_size() <= 0 || report.seed().size() != seed_.size()) return;  // malformed: keep what we know
  std::vector<LengthSeed> length_seeds;
  for (const ::indexcache::v1::LengthSeed& s : report.length_seeds()) {
    const int32_t previous = length_seeds.empty() ? 0 : length_seeds.back().min_prompt_tokens;
    if (s.seed().size() != seed_.size() || s.min_prompt_tokens() <= previous) return;
    LengthSeed& seed = length_seeds.emplace_back();
    seed.min_prompt_tokens = s.min_prompt_tokens();
    std::copy(s.seed().begin(), s.seed().end(), seed.seed.begin());
  }
  if (report.snapshot()) {
    keys_ = absl::flat_hash_set<uint64_t>(report.stored().begin(), report.stored().end());
  } else {
    if (report.epoch() != epoch_ || report.since_version() != version_) return;
    // The lists are the net change, disjoint (CachedBlockLog::Since).
    for (uint64_t key : report.stored()) keys_.insert(key);
    for (uint64_t key : report.removed()) keys_.erase(key);
  }
  epoch_ = report.epoch();
  version_ = report.version();
  block_size_ = report.block_size();
  std::copy(report.seed().begin(), report.seed().end(), seed_.begin());
  length_seeds_ = std::move(length_seeds);
}

const BlockKey& CachedBlockIndex::SeedFor(int64_t prompt_tokens) const {
  const BlockKey* seed = &seed_;
  for (const LengthSeed& s : length_seeds_) {
    if (prompt_tokens >= s.min_prompt_tokens) seed = &s.seed;
  }
  return *seed;
}

void CachedBlockIndex::Clear() { *this = CachedBlockIndex(); }

::indexcache::v1::CachedBlocksCursor CachedBlockIndex::cursor() const {
  ::indexcache::v1::CachedBlocksCursor cursor;
  cursor.set_epoch(epoch_);
  cursor.set_version(version_);
  return cursor;
}

int64_t CachedBlockIndex::LeadingHits(absl::Span<const uint64_t> keys) const {
  int64_t hits = 0;
  while (hits < static_cast<int64_t>(keys.size()) && keys_.contains(keys[hits])) ++hits;
  return hits;
}

}  // namespace indexcache
