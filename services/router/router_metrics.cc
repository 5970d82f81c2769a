#include "services/router/router_metrics.h"

#include "common/metrics/build_info_metric.h"

#include <string>

namespace indexcache {
namespace {

using prometheus::BuildCounter;
using prometheus::BuildGauge;
using prometheus::BuildHistogram;
using prometheus::Histogram;

constexpr const char* kOutcomes[] = {"ok",          "cancelled",         "invalid_argument", "resource_exhausted",
                                     "unavailable", "deadline_exceeded", "error"};

const char* Outcome(const grpc::Status& status, bool aborted) {
  if (aborted) return "cancelled";
  switch (status.error_code()) {
    case grpc::StatusCode::OK:
      return "ok";
    case grpc::StatusCode::CANCELLED:
      return "cancelled";
    case grpc::StatusCode::INVALID_ARGUMENT:
    case grpc::StatusCode::OUT_OF_RANGE:
      return "invalid_argument";
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      return "resource_exhausted";
    case grpc::StatusCode::UNAVAILABLE:
      return "unavailable";
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return "deadline_exceeded";
    default:
      return "error";
  }
}

// Bucket edges: TTFT from a cached short prompt on a GPU (ms) to a long prompt queued on a CPU
// (a minute); token gaps from a GPU decode step (ms) to a CPU step under load (a second); whole
// requests up to the default 10-minute deadline.
const Histogram::BucketBoundaries kTtftBuckets = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75,
                                                  1,     2.5,  5,     10,   20,  40,   80};
const Histogram::BucketBoundaries kItlBuckets = {0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08,
                                                 0.1,   0.15,   0.25,  0.5,  1,    2.5};
const Histogram::BucketBoundaries kE2eBuckets = {0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320, 640};
const Histogram::BucketBoundaries kQueueBuckets = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                                   0.25,   0.5,   1,      2.5,   5,    10,    30,    60};

}  // namespace

RouterMetrics::RouterMetrics()
    : registry_(std::make_shared<prometheus::Registry>()),
      requests_(BuildCounter()
                    .Name("indexcache_requests_total")
                    .Help("Generate requests by outcome (the status the client got; aborted ones are cancelled)")
                    .Register(*registry_)),
      migrations_(BuildCounter()
                      .Name("indexcache_router_migrations_total")
                      .Help("Streams moved to another prefill/decode pair after tokens reached the client, by "
                            "the failure that moved them")
                      .Register(*registry_)),
      routing_decisions_(BuildCounter()
                             .Name("indexcache_router_routing_decisions_total")
                             .Help("Workers chosen for a request, by role and basis: load (no worker held any of "
                                   "the prompt), prefix (the cheapest worker holds the most of it), "
                                   "load_over_prefix (a worker held more, but its load made it dearer)")
                             .Register(*registry_)),
      cached_prompt_tokens_(BuildCounter()
                                .Name("indexcache_router_cached_prompt_tokens_total")
                                .Help("Prompt tokens the chosen worker's prefix cache held when the router "
                                      "placed the request, by role (the router's view, from load reports)")
                                .Register(*registry_)),
      time_to_first_token_(BuildHistogram()
                               .Name("indexcache_time_to_first_token_seconds")
                               .Help("From a request's arrival at the router to its first token sent to the client")
                               .Register(*registry_)
                               .Add({}, kTtftBuckets)),
      inter_token_latency_(BuildHistogram()
                               .Name("indexcache_inter_token_latency_seconds")
                               .Help("Time between tokens sent to the client, one observation per token after "
                                     "the first")
                               .Register(*registry_)
                               .Add({}, kItlBuckets)),
      request_duration_(BuildHistogram()
                            .Name("indexcache_request_duration_seconds")
                            .Help("End-to-end time of requests that finished (ok), arrival to the final message")
                            .Register(*registry_)
                            .Add({}, kE2eBuckets)),
      queue_time_(BuildHistogram()
                      .Name("indexcache_queue_time_seconds")
                      .Help("From arrival until a decode worker reserved KV blocks and the prefill began")
                      .Register(*registry_)
                      .Add({}, kQueueBuckets)),
      prompt_tokens_(BuildCounter()
                         .Name("indexcache_prompt_tokens_total")
                         .Help("Prompt tokens of admitted requests")
                         .Register(*registry_)
                         .Add({})),
      generation_tokens_(BuildCounter()
                             .Name("indexcache_generation_tokens_total")
                             .Help("Tokens generated and sent to clients")
                             .Register(*registry_)
                             .Add({})),
      running_requests_(BuildGauge()
                            .Name("indexcache_running_requests")
                            .Help("Requests past the queue: prefilling, handing off or decoding")
                            .Register(*registry_)
                            .Add({})),
      queued_requests_(BuildGauge()
                           .Name("indexcache_queued_requests")
                           .Help("Requests admitted and waiting for a decode worker's KV blocks and a prefill")
                           .Register(*registry_)
                           .Add({})),
      workers_(BuildGauge()
                   .Name("indexcache_workers")
                   .Help("Workers known to the router by role and state (healthy: in rotation)")
                   .Register(*registry_)) {
  for (const char* outcome : kOutcomes) requests_.Add({{"outcome", outcome}});
  for (const char* reason : kMigrationReasons) migrations_.Add({{"reason", reason}});
  for (const char* role : {"prefill", "decode"}) {
    for (RoutingBasis basis : {RoutingBasis::kLoad, RoutingBasis::kPrefix, RoutingBasis::kLoadOverPrefix}) {
      routing_decisions_.Add({{"role", role}, {"basis", RoutingBasisName(basis)}});
    }
    cached_prompt_tokens_.Add({{"role", role}});
  }
  SetWorkers({});
  RegisterBuildInfo(*registry_);
}

void RouterMetrics::CountRequest(const grpc::Status& status, bool aborted, absl::Duration since_arrival) {
  requests_.Add({{"outcome", Outcome(status, aborted)}}).Increment();
  if (status.ok() && !aborted) request_duration_.Observe(absl::ToDoubleSeconds(since_arrival));
}

void RouterMetrics::ObserveTokens(int tokens, absl::Duration gap, bool first) {
  if (tokens <= 0) return;
  generation_tokens_.Increment(tokens);
  const double seconds = absl::ToDoubleSeconds(gap);
  if (first) {
    time_to_first_token_.Observe(seconds);
    // Tokens that came with the first one arrived with no gap.
    for (int i = 1; i < tokens; ++i) inter_token_latency_.Observe(0.0);
    return;
  }
  for (int i = 0; i < tokens; ++i) inter_token_latency_.Observe(seconds / tokens);
}

void RouterMetrics::SetRequests(int queued, int in_flight) {
  queued_requests_.Set(queued);
  running_requests_.Set(in_flight - queued);
}

void RouterMetrics::SetWorkers(const std::vector<WorkerInfo>& workers) {
  for (const char* role : {"prefill", "decode"}) {
    for (const bool healthy : {true, false}) {
      double count = 0;
      for (const WorkerInfo& w : workers) {
        const char* worker_role = w.role == v1::PREFILL ? "prefill" : "decode";
        if (std::string(worker_role) == role && w.healthy == healthy) ++count;
      }
      workers_.Add({{"role", role}, {"state", healthy ? "healthy" : "unhealthy"}}).Set(count);
    }
  }
}

void RouterMetrics::CountPlacement(const Placement& placement) {
  routing_decisions_.Add({{"role", "prefill"}, {"basis", RoutingBasisName(placement.prefill_basis)}}).Increment();
  routing_decisions_.Add({{"role", "decode"}, {"basis", RoutingBasisName(placement.decode_basis)}}).Increment();
  cached_prompt_tokens_.Add({{"role", "prefill"}}).Increment(static_cast<double>(placement.prefill_cached_tokens));
  cached_prompt_tokens_.Add({{"role", "decode"}}).Increment(static_cast<double>(placement.decode_cached_tokens));
}

}  // namespace indexcache
