#include "common/engine/published_load.h"

#include <random>
#include <utility>
#include <vector>

#include "common/engine/engine.h"

namespace indexcache {
namespace {

// Events kept for readers that fell behind: a router behind by more gets the whole set instead.
constexpr size_t kMaxCachedBlockEvents = 1 << 16;

std::vector<uint64_t> ShortKeys(const std::vector<BlockKey>& keys) {
  std::vector<uint64_t> short_keys;
  short_keys.reserve(keys.size());
  for (const BlockKey& key : keys) short_keys.push_back(PrefixCache::ShortKey(key));
  return short_keys;
}

}  // namespace

// A random epoch per process: a router that followed this worker's previous run starts over.
PublishedLoad::PublishedLoad() : cached_blocks_(std::random_device{}() ^ (uint64_t{std::random_device{}()} << 32),
                                                kMaxCachedBlockEvents) {}

void PublishedLoad::Publish(Engine& engine) {
  const IndexCacheStats stats = engine.TakeStats();
  const PrefixCacheStats prefix_cache = engine.TakePrefixCacheStats();
  const PagedKvCache& cache = engine.cache();
  const bool first = !tracking_ && engine.prefix_cache_enabled();
  std::vector<uint64_t> cached_now;
  std::vector<PrefixCacheChange> changes;
  if (first) {
    tracking_ = true;
    cached_now = ShortKeys(engine.TrackPrefixCacheChanges());
  } else if (tracking_) {
    changes = engine.TakePrefixCacheChanges();
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (first) {
    enabled_ = true;
    seeds_.clear();
    for (size_t p = 0; p < engine.prefix_seeds().size(); ++p) {
      seeds_.push_back({engine.patterns().patterns()[p].min_prompt_tokens, engine.prefix_seeds()[p]});
    }
    block_size_ = cache.block_size();
    cached_blocks_.Reset(cached_now);
  }
  for (const PrefixCacheChange& change : changes) cached_blocks_.Record(PrefixCache::ShortKey(change.key), change.stored);
  if (first || !changes.empty()) {
    std::lock_guard<std::mutex> listening(listener_mu_);
    if (cached_blocks_changed_) cached_blocks_changed_();
  }
  load_.free_kv_blocks = cache.num_free_blocks();
  load_.total_kv_blocks = cache.num_blocks();
  load_.kv_block_size = cache.block_size();
  load_.requests = static_cast<int32_t>(engine.num_requests());
  load_.prefix_cached_blocks = cache.num_cached_blocks();
  load_.prefix_idle_blocks = cache.num_idle_cached_blocks();
  load_.stats += stats;
  load_.prefix_cache += prefix_cache;
}

EngineLoad PublishedLoad::Take() {
  std::lock_guard<std::mutex> lock(mu_);
  EngineLoad taken = load_;
  load_.stats = IndexCacheStats();
  load_.prefix_cache = PrefixCacheStats();
  return taken;
}

int32_t PublishedLoad::CachedPrefixTokens(absl::Span<const int32_t> prompt, int64_t client_prompt_tokens) {
  BlockKey seed;
  int32_t block_size = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!enabled_ || prompt.empty()) return 0;
    seed = seeds_.front().seed;
    for (const LengthSeed& s : seeds_) {
      if (client_prompt_tokens >= s.min_prompt_tokens) seed = s.seed;
    }
    block_size = block_size_;
  }
  // Hashed outside the lock: one SHA-256 compression per 16 tokens is far more than a copy.
  const std::vector<uint64_t> keys = PrefixCache::LookupShortKeys(seed, block_size, prompt);
  std::lock_guard<std::mutex> lock(mu_);
  size_t hits = 0;
  while (hits < keys.size() && cached_blocks_.Contains(keys[hits])) ++hits;
  return static_cast<int32_t>(hits) * block_size;
}

void PublishedLoad::OnCachedBlocksChanged(std::function<void()> changed) {
  std::lock_guard<std::mutex> listening(listener_mu_);
  cached_blocks_changed_ = std::move(changed);
}

CachedBlocksReport PublishedLoad::CachedBlocksSince(uint64_t epoch, uint64_t version, size_t max_keys) {
  std::lock_guard<std::mutex> lock(mu_);
  CachedBlocksReport report;
  if (!enabled_) return report;
  report.enabled = true;
  report.seed = seeds_.front().seed;
  report.length_seeds.assign(seeds_.begin() + 1, seeds_.end());
  report.block_size = block_size_;
  report.update = cached_blocks_.Since(epoch, version, max_keys);
  return report;
}

}  // namespace indexcache
