// RouterMetrics: outcomes from the client's status, token latencies, routing decisions, and the
// scrape-time gauges.
#include "services/router/router_metrics.h"

#include <string>

#include "gtest/gtest.h"
#include "tests/metrics/registry_sample.h"

namespace indexcache {
namespace {

using ::indexcache::testing::Sample;

TEST(RouterMetricsTest, CountsOutcomesByTheClientsStatus) {
  RouterMetrics metrics;
  metrics.CountRequest(grpc::Status::OK, false, absl::Seconds(2));
  metrics.CountRequest(grpc::Status::OK, /*aborted=*/true, absl::Seconds(1));
  metrics.CountRequest(grpc::Status(grpc::StatusCode::CANCELLED, ""), false, absl::Seconds(1));
  metrics.CountRequest(grpc::Status(grpc::StatusCode::OUT_OF_RANGE, ""), false, absl::ZeroDuration());
  metrics.CountRequest(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, ""), false, absl::ZeroDuration());
  metrics.CountRequest(grpc::Status(grpc::StatusCode::UNAVAILABLE, ""), false, absl::ZeroDuration());
  metrics.CountRequest(grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, ""), false, absl::ZeroDuration());
  metrics.CountRequest(grpc::Status(grpc::StatusCode::DATA_LOSS, ""), false, absl::ZeroDuration());
  const prometheus::Registry& r = *metrics.registry();
  EXPECT_EQ(Sample(r, "indexcache_requests_total", {{"outcome", "ok"}}), 1);
  EXPECT_EQ(Sample(r, "indexcache_requests_total", {{"outcome", "cancelled"}}), 2);
  EXPECT_EQ(Sample(r, "indexcache_requests_total", {{"outcome", "invalid_argument"}}), 1);
  EXPECT_EQ(Sample(r, "indexcache_requests_total", {{"outcome", "resource_exhausted"}}), 1);
  EXPECT_EQ(Sample(r, "indexcache_requests_total", {{"outcome", "unavailable"}}), 1);
  EXPECT_EQ(Sample(r, "indexcache_requests_total", {{"outcome", "deadline_exceeded"}}), 1);
  EXPECT_EQ(Sample(r, "indexcache_requests_total", {{"outcome", "error"}}), 1);
  double sum = 0;
  EXPECT_EQ(Sample(r, "indexcache_request_duration_seconds", {}, &sum), 1) << "only finished requests";
  EXPECT_EQ(sum, 2.0);
}

TEST(RouterMetricsTest, ObservesFirstTokenAndEachLaterTokensGap) {
  RouterMetrics metrics;
  metrics.ObserveTokens(2, absl::Milliseconds(300), /*first=*/true);   // TTFT 0.3 s; the second came along
  metrics.ObserveTokens(1, absl::Milliseconds(40), false);
  metrics.ObserveTokens(3, absl::Milliseconds(90), false);  // three tokens in one message: 30 ms each
  metrics.ObserveTokens(0, absl::Milliseconds(10), false);  // text only: no token, no observation
  const prometheus::Registry& r = *metrics.registry();
  double sum = 0;
  EXPECT_EQ(Sample(r, "indexcache_time_to_first_token_seconds", {}, &sum), 1);
  EXPECT_DOUBLE_EQ(sum, 0.3);
  EXPECT_EQ(Sample(r, "indexcache_inter_token_latency_seconds", {}, &sum), 5);  // tokens after the first
  EXPECT_DOUBLE_EQ(sum, 0.0 + 0.04 + 3 * 0.03);
  EXPECT_EQ(Sample(r, "indexcache_generation_tokens_total"), 6);
}

TEST(RouterMetricsTest, CountsEachRolesRoutingBasisAndTheCachedPromptTokens) {
  RouterMetrics metrics;
  const prometheus::Registry& r = *metrics.registry();
  // Every series exists at zero before the first placement, for the dashboards.
  EXPECT_EQ(Sample(r, "indexcache_router_routing_decisions_total", {{"role", "decode"}, {"basis", "load_over_prefix"}}),
            0);
  Placement placement;
  placement.prefill_basis = RoutingBasis::kPrefix;
  placement.prefill_cached_tokens = 96;
  metrics.CountPlacement(placement);
  placement.prefill_basis = RoutingBasis::kLoadOverPrefix;
  placement.prefill_cached_tokens = 0;
  metrics.CountPlacement(placement);
  EXPECT_EQ(Sample(r, "indexcache_router_routing_decisions_total", {{"role", "prefill"}, {"basis", "prefix"}}), 1);
  EXPECT_EQ(Sample(r, "indexcache_router_routing_decisions_total", {{"role", "prefill"}, {"basis", "load_over_prefix"}}),
            1);
  EXPECT_EQ(Sample(r, "indexcache_router_routing_decisions_total", {{"role", "decode"}, {"basis", "load"}}), 2);
  EXPECT_EQ(Sample(r, "indexcache_router_cached_prompt_tokens_total", {{"role", "prefill"}}), 96);
  EXPECT_EQ(Sample(r, "indexcache_router_cached_prompt_tokens_total", {{"role", "decode"}}), 0);
}

TEST(RouterMetricsTest, ReadsQueueAndPoolGauges) {
  RouterMetrics metrics;
  metrics.SetRequests(/*queued=*/3, /*in_flight=*/10);
  const auto worker = [](v1::WorkerRole role, bool healthy) {
    WorkerInfo info;
    info.role = role;
    info.healthy = healthy;
    return info;
  };
  const WorkerInfo healthy_decode = worker(v1::DECODE, true);
  const WorkerInfo sick_decode = worker(v1::DECODE, false);
  const WorkerInfo healthy_prefill = worker(v1::PREFILL, true);
  metrics.SetWorkers({healthy_decode, sick_decode, healthy_decode, healthy_prefill});
  const prometheus::Registry& r = *metrics.registry();
  EXPECT_EQ(Sample(r, "indexcache_queued_requests"), 3);
  EXPECT_EQ(Sample(r, "indexcache_running_requests"), 7);
  EXPECT_EQ(Sample(r, "indexcache_workers", {{"role", "decode"}, {"state", "healthy"}}), 2);
  EXPECT_EQ(Sample(r, "indexcache_workers", {{"role", "decode"}, {"state", "unhealthy"}}), 1);
  EXPECT_EQ(Sample(r, "indexcache_workers", {{"role", "prefill"}, {"state", "healthy"}}), 1);
  EXPECT_EQ(Sample(r, "indexcache_workers", {{"role", "prefill"}, {"state", "unhealthy"}}), 0);
  metrics.SetWorkers({});
  EXPECT_EQ(Sample(r, "indexcache_workers", {{"role", "decode"}, {"state", "healthy"}}), 0) << "a worker left";
}

}  // namespace
}  // namespace indexcache
