#include "common/engine/published_load.h"

#include "common/engine/engine.h"

namespace indexcache {

void PublishedLoad::Publish(Engine& engine) {
  const IndexCacheStats stats = engine.TakeStats();
  const PrefixCacheStats prefix_cache = engine.TakePrefixCacheStats();
  const PagedKvCache& cache = engine.cache();
  std::lock_guard<std::mutex> lock(mu_);
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

}  // namespace indexcache
