// The Prometheus metrics of a prefill or decode worker (names in docs/operations.md): KV blocks and
// queues read from the worker's load report, the engine's IndexCache and prefix-cache counters and
// reuse telemetry (a layer's overlap series appears with its first measured row), and the handoff —
// bytes by payload kind, latency, bandwidth, failures — each labelled with the worker's role.
// Counters only grow: the engine's counters arrive as deltas (Engine::TakeStats resets), taken by
// whoever already visits the engine loop (the load report), so the loop itself takes no extra lock.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "common/handoff/handoff_transport.h"
#include "common/kv/prefix_cache.h"
#include "common/model/indexcache_stats.h"
#include "indexcache/v1/internal.pb.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace indexcache {

class WorkerMetrics {
 public:
  // `role` is PREFILL or DECODE; the layer counts are those of the pattern the worker runs (with an
  // adaptive pattern, the one for prompts below every threshold). `patterns`: (min_prompt_tokens,
  // "FS…") of every pattern the worker runs, in the engine's order (PatternSchedule::Named, which
  // IndexCacheStats::pattern_requests follows), base first.
  WorkerMetrics(v1::WorkerRole role, int32_t full_layers, int32_t shared_layers,
                const std::vector<std::pair<int32_t, std::string>>& patterns = {});

  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }

  // The engine's counters since the previous call, and from them the estimated speedup.
  void AddEngineStats(const IndexCacheStats& delta);
  // KV blocks, queued requests and running sequences, as the worker reports its load.
  void SetLoad(const v1::WorkerLoad& load);
  // The prefix cache's counters since the previous call, and its blocks now: findable in all
  // (`cached`), of which `idle` are held by no request.
  void AddPrefixCache(const PrefixCacheStats& delta, int32_t cached, int32_t idle);
  // Bytes of one handoff (or of a part of it) by payload kind; for the prefill worker the bytes it
  // sent, for the decode worker those it received. Also counts the index-key bytes that Shared
  // layers kept off the wire.
  void AddHandoffBytes(v1::HandoffTransport transport, const HandoffByteCounts& bytes);
  // Prefill: the time a handoff spent sealing and writing chunks (not waiting for the compute).
  void AddHandoffSendTime(v1::HandoffTransport transport, absl::Duration duration);
  // A completed handoff: from its first chunk to the decode worker's verdict.
  void ObserveHandoff(v1::HandoffTransport transport, absl::Duration duration, uint64_t bytes);
  // A handoff that failed: refused by the decode worker, corrupt, or its connection broke.
  void CountHandoffFailure(v1::HandoffTransport transport, const absl::Status& why);

  // The estimate the gauge shows (1 before any forward pass), for tests and logs.
  double estimated_speedup() const;

 private:
  prometheus::Labels With(std::initializer_list<std::pair<const std::string, std::string>> labels) const;

  const std::string role_;
  const int32_t full_layers_;
  const int32_t shared_layers_;
  std::shared_ptr<prometheus::Registry> registry_;

  prometheus::Gauge& kv_blocks_used_;
  prometheus::Gauge& kv_blocks_free_;
  prometheus::Gauge& queued_requests_;
  prometheus::Gauge& running_sequences_;

  prometheus::Counter& indexer_runs_;
  prometheus::Counter& indexer_skips_;
  prometheus::Counter& indexer_seconds_;
  prometheus::Counter& forward_seconds_;
  prometheus::Counter& index_key_bytes_not_stored_;
  prometheus::Counter& index_key_bytes_not_sent_;
  prometheus::Counter& prefix_queried_tokens_;
  prometheus::Counter& prefix_hit_tokens_;
  prometheus::Counter& prefix_queried_blocks_;
  prometheus::Counter& prefix_hit_blocks_;
  prometheus::Counter& prefix_evictions_;
  prometheus::Family<prometheus::Gauge>& prefix_blocks_;
  prometheus::Gauge& estimated_speedup_;
  prometheus::Counter& reuse_telemetry_passes_;
  prometheus::Family<prometheus::Histogram>& reuse_topk_overlap_;  // by Shared layer
  std::vector<prometheus::Counter*> pattern_requests_;  // indexcache_pattern_requests_total, per pattern

  prometheus::Family<prometheus::Counter>& handoff_bytes_;
  prometheus::Family<prometheus::Counter>& handoff_send_seconds_;
  prometheus::Family<prometheus::Histogram>& handoff_duration_;
  prometheus::Family<prometheus::Histogram>& handoff_bandwidth_;
  prometheus::Family<prometheus::Counter>& handoff_failures_;

  mutable std::mutex mu_;   // serializes AddEngineStats, so the gauge matches the counters
  IndexCacheStats totals_;  // guarded by mu_: everything added since start
};

// "grpc", "tcp", "nccl": the transport label.
const char* TransportLabel(v1::HandoffTransport transport);

}  // namespace indexcache
