// What a worker reports about its engine (KV blocks, requests, the IndexCache and prefix-cache
// counters), published by the EngineLoop's thread after every turn and read by any thread without
// waiting for the loop. A heartbeat or a health answer that waited for the loop queued behind whole
// prefill steps: a worker busy with three 7,000-token prompts fell out of the router's pool in 80 of
// 119 samples (issue 13).
#pragma once

#include <cstdint>
#include <functional>
#include <mutex>
#include <vector>

#include "absl/types/span.h"
#include "common/kv/cached_block_log.h"
#include "common/kv/prefix_cache.h"
#include "common/model/indexcache_stats.h"

namespace indexcache {

class Engine;

struct EngineLoad {
  int32_t free_kv_blocks = 0;
  int32_t total_kv_blocks = 0;
  int32_t kv_block_size = 0;
  int32_t requests = 0;   // in the engine: admitted and not released
  int32_t prefix_cached_blocks = 0;  // findable in the prefix cache, held or idle
  int32_t prefix_idle_blocks = 0;    // of those, held by no request (counted in free_kv_blocks)
  IndexCacheStats stats;  // the engine's counters since the previous Take
  PrefixCacheStats prefix_cache;  // the prefix cache's counters since the previous Take
};

class PublishedLoad {
 public:
  PublishedLoad();

  // Loop thread only: the engine's state now; its counters (Engine::TakeStats) join those not taken yet.
  void Publish(Engine& engine);
  // Any thread; never waits for the engine: the last published state, with the counters accumulated
  // since the previous Take (which then start again from zero, as Engine::TakeStats does).
  EngineLoad Take();
  // Any thread: the cached keys a reader that applied (epoch, version) needs next, at most `max_keys`.
  CachedBlocksReport CachedBlocksSince(uint64_t epoch, uint64_t version, size_t max_keys);
  // Any thread: how many of `prompt`'s leading tokens the prefix cache held as of the last Publish
  // (whole blocks before the last token, as the engine looks them up, under the pattern a prompt of
  // `client_prompt_tokens` gets; 0 without a cache). What the request will not compute, for the load
  // a worker reports before the engine looks it up.
  int32_t CachedPrefixTokens(absl::Span<const int32_t> prompt, int64_t client_prompt_tokens);
  // Any thread: `changed` runs on the loop thread after every Publish that changed the cached keys
  // (a worker tells the router at once rather than at its next heartbeat); null stops it. Once this
  // returns, the previous listener is not running and never runs again.
  void OnCachedBlocksChanged(std::function<void()> changed);

 private:
  std::mutex mu_;    // held only to copy the few fields in or out (and the log's delta)
  EngineLoad load_;  // guarded by mu_
  // The prefix cache's keys, followed from the first Publish on. tracking_ belongs to the loop thread;
  // the rest is guarded by mu_.
  bool tracking_ = false;
  bool enabled_ = false;
  std::vector<LengthSeed> seeds_;  // every pattern's, the base's first (at 0 tokens)
  int32_t block_size_ = 0;
  CachedBlockLog cached_blocks_;
  std::mutex listener_mu_;  // held while the listener runs, so replacing it waits for that
  std::function<void()> cached_blocks_changed_;  // guarded by listener_mu_
};

}  // namespace indexcache
