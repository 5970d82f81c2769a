// The router's Prometheus metrics (names in docs/operations.md): requests by outcome, time to first
// token, inter-token latency, end-to-end and queue time, prompt and generated tokens, and — read at
// each scrape — running and queued requests and the workers in the pool by role and health.
#pragma once

#include <memory>
#include <vector>

#include "absl/time/time.h"
#include "grpcpp/support/status.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "services/router/worker_registry.h"

namespace indexcache {

class RouterMetrics {
 public:
  RouterMetrics();

  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }

  // A Generate call's end with the status the client got; `aborted`: ended by an Abort request
  // (the stream itself ends OK with finish ABORT). Finished requests also observe their duration.
  void CountRequest(const grpc::Status& status, bool aborted, absl::Duration since_arrival);
  void CountPromptTokens(int64_t tokens) { prompt_tokens_.Increment(static_cast<double>(tokens)); }
  // From arrival until a decode worker admitted the request (KV reserved) and its prefill began.
  void ObserveQueueTime(absl::Duration queued) { queue_time_.Observe(absl::ToDoubleSeconds(queued)); }
  // `tokens` relayed to the client `gap` after the previous ones (each token counts the gap shared
  // among them), or, for the first ones, `gap` after the request arrived.
  void ObserveTokens(int tokens, absl::Duration gap, bool first);
  // A stream moved to other workers after tokens reached the client (generate_call.h); `reason` is
  // one of kMigrationReasons.
  void CountMigration(const char* reason) { migrations_.Add({{"reason", reason}}).Increment(); }
  static constexpr const char* kMigrationReasons[] = {"decode_failed", "decode_stalled", "prefill_failed",
                                                      "prefill_stalled"};
  // A request's workers were chosen: why (load_balancer.h's RoutingBasis) and how much of its prompt
  // each one's prefix cache held, as the router knew it.
  void CountPlacement(const Placement& placement);
  // Gauges read at scrape time.
  void SetRequests(int queued, int in_flight);
  void SetWorkers(const std::vector<WorkerInfo>& workers);

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>& requests_;
  prometheus::Family<prometheus::Counter>& migrations_;
  prometheus::Family<prometheus::Counter>& routing_decisions_;
  prometheus::Family<prometheus::Counter>& cached_prompt_tokens_;
  prometheus::Histogram& time_to_first_token_;
  prometheus::Histogram& inter_token_latency_;
  prometheus::Histogram& request_duration_;
  prometheus::Histogram& queue_time_;
  prometheus::Counter& prompt_tokens_;
  prometheus::Counter& generation_tokens_;
  prometheus::Gauge& running_requests_;
  prometheus::Gauge& queued_requests_;
  prometheus::Family<prometheus::Gauge>& workers_;
};

}  // namespace indexcache
