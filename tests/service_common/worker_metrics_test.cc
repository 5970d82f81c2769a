// WorkerMetrics: the speedup estimate, the derived byte counters and the prefix cache's series, worked
// out by hand.
#include "services/common/worker_metrics.h"

#include <string>

#include "gtest/gtest.h"
#include "tests/metrics/registry_sample.h"

namespace indexcache {
namespace {

using ::indexcache::testing::Sample;

TEST(WorkerMetricsTest, EstimatesTheSpeedupFromMeasuredIndexerCost) {
  WorkerMetrics metrics(v1::DECODE, /*full_layers=*/2, /*shared_layers=*/6);
  EXPECT_EQ(metrics.estimated_speedup(), 1.0) << "no claim before any forward pass";
  IndexCacheStats step;
  step.indexer_runs = 200;  // 100 tokens × 2 Full layers
  step.indexer_skips = 600;
  step.indexer_seconds = 1.0;  // 5 ms a run
  step.forward_seconds = 4.0;
  step.index_key_bytes_not_stored = 600 * 32 * 4;
  metrics.AddEngineStats(step);
  // Had the 600 skipped runs run at 5 ms: 4 + 3 seconds instead of 4.
  EXPECT_DOUBLE_EQ(metrics.estimated_speedup(), 7.0 / 4.0);
  step.indexer_seconds = 3.0;  // the next 200 runs cost 15 ms each: the mean becomes 10 ms
  step.forward_seconds = 8.0;
  metrics.AddEngineStats(step);
  EXPECT_DOUBLE_EQ(metrics.estimated_speedup(), (12.0 + 1200 * 0.01) / 12.0);

  const prometheus::Registry& r = *metrics.registry();
  EXPECT_EQ(Sample(r, "indexcache_indexer_runs_total", {{"role", "decode"}}), 400);
  EXPECT_EQ(Sample(r, "indexcache_indexer_skips_total", {{"role", "decode"}}), 1200);
  EXPECT_EQ(Sample(r, "indexcache_indexer_seconds_total", {{"role", "decode"}}), 4.0);
  EXPECT_EQ(Sample(r, "indexcache_forward_seconds_total", {{"role", "decode"}}), 12.0);
  EXPECT_EQ(Sample(r, "indexcache_index_key_bytes_not_stored_total", {{"role", "decode"}}), 2 * 600 * 32 * 4);
  EXPECT_EQ(Sample(r, "indexcache_estimated_speedup_vs_all_full", {{"role", "decode"}}), 2.0);
  EXPECT_EQ(Sample(r, "indexcache_layers", {{"role", "decode"}, {"kind", "shared"}}), 6);
}

TEST(WorkerMetricsTest, CountsTheRequestsOfEachPatternOfAnAdaptivePattern) {
  WorkerMetrics metrics(v1::PREFILL, 8, 0, {{0, "FFFFFFFF"}, {8192, "FSSSFSSS"}});
  const prometheus::Registry& r = *metrics.registry();
  const prometheus::Labels base{{"role", "prefill"}, {"pattern", "FFFFFFFF"}, {"min_prompt_tokens", "0"}};
  const prometheus::Labels long_prompts{{"role", "prefill"}, {"pattern", "FSSSFSSS"}, {"min_prompt_tokens", "8192"}};
  EXPECT_EQ(Sample(r, "indexcache_pattern_requests_total", base), 0) << "every pattern's series exists from the start";
  IndexCacheStats step;
  step.pattern_requests = {3, 1};
  metrics.AddEngineStats(step);
  step.pattern_requests = {0, 2};
  metrics.AddEngineStats(step);
  EXPECT_EQ(Sample(r, "indexcache_pattern_requests_total", base), 3);
  EXPECT_EQ(Sample(r, "indexcache_pattern_requests_total", long_prompts), 3);
}

// The cumulative count of bucket `le` of histogram `name`'s series with `labels`; -1 when absent.
double BucketCount(const prometheus::Registry& registry, const std::string& name, const prometheus::Labels& labels,
                   double le) {
  for (const prometheus::MetricFamily& family : registry.Collect()) {
    if (family.name != name) continue;
    for (const prometheus::ClientMetric& metric : family.metric) {
      prometheus::Labels have;
      for (const prometheus::ClientMetric::Label& label : metric.label) have[label.name] = label.value;
      if (have != labels) continue;
      for (const auto& bucket : metric.histogram.bucket) {
        if (bucket.upper_bound == le) return static_cast<double>(bucket.cumulative_count);
      }
    }
  }
  return -1;
}

TEST(WorkerMetricsTest, ExportsTheReuseOverlapPerSharedLayer) {
  WorkerMetrics metrics(v1::PREFILL, /*full_layers=*/2, /*shared_layers=*/6);
  IndexCacheStats step;
  step.reuse_telemetry_passes = 1;
  step.reuse_overlap.resize(4);  // layers 0-2 measured nothing
  for (double overlap : {0.5, 0.75, 1.0}) step.reuse_overlap[3].Add(overlap);
  metrics.AddEngineStats(step);
  metrics.AddEngineStats(step);

  const prometheus::Registry& r = *metrics.registry();
  EXPECT_EQ(Sample(r, "indexcache_reuse_telemetry_passes_total", {{"role", "prefill"}}), 2);
  const prometheus::Labels layer3{{"role", "prefill"}, {"layer", "3"}};
  double sum = 0;
  EXPECT_EQ(Sample(r, "indexcache_reuse_topk_overlap", layer3, &sum), 6);
  EXPECT_DOUBLE_EQ(sum, 4.5);
  EXPECT_EQ(BucketCount(r, "indexcache_reuse_topk_overlap", layer3, 0.4), 0);
  EXPECT_EQ(BucketCount(r, "indexcache_reuse_topk_overlap", layer3, 0.5), 2);
  EXPECT_EQ(BucketCount(r, "indexcache_reuse_topk_overlap", layer3, 0.8), 4);
  EXPECT_EQ(BucketCount(r, "indexcache_reuse_topk_overlap", layer3, 0.99), 4);
  EXPECT_EQ(BucketCount(r, "indexcache_reuse_topk_overlap", layer3, 1.0), 6);
  // A layer without a measured row has no series (a checkpoint without its indexer, or a Full layer).
  EXPECT_EQ(BucketCount(r, "indexcache_reuse_topk_overlap", {{"role", "prefill"}, {"layer", "2"}}, 1.0), -1);
}

TEST(WorkerMetricsTest, CountsHandoffBytesAndTheIndexKeysNotSent) {
  WorkerMetrics metrics(v1::PREFILL, /*full_layers=*/2, /*shared_layers=*/6);
  HandoffByteCounts bytes;
  bytes.latent_bytes = 10000;
  bytes.index_key_bytes = 2000;  // 1000 per Full layer: the 6 Shared layers would have sent 6000
  bytes.metadata_bytes = 300;
  metrics.AddHandoffBytes(v1::HANDOFF_TRANSPORT_TCP, bytes);
  metrics.ObserveHandoff(v1::HANDOFF_TRANSPORT_TCP, absl::Milliseconds(2), 12300);
  metrics.CountHandoffFailure(v1::HANDOFF_TRANSPORT_GRPC, absl::DataLossError("checksum"));
  metrics.CountHandoffFailure(v1::HANDOFF_TRANSPORT_GRPC, absl::FailedPreconditionError("other pattern"));
  metrics.CountHandoffFailure(v1::HANDOFF_TRANSPORT_GRPC, absl::CancelledError("peer gone"));

  const prometheus::Registry& r = *metrics.registry();
  const auto tcp = [](const char* payload) {
    return prometheus::Labels{{"role", "prefill"}, {"payload", payload}, {"transport", "tcp"}};
  };
  EXPECT_EQ(Sample(r, "indexcache_handoff_bytes_total", tcp("kv")), 10000);
  EXPECT_EQ(Sample(r, "indexcache_handoff_bytes_total", tcp("index_keys")), 2000);
  EXPECT_EQ(Sample(r, "indexcache_handoff_bytes_total", tcp("metadata")), 300);
  EXPECT_EQ(Sample(r, "indexcache_handoff_bytes_total",
                   {{"role", "prefill"}, {"payload", "kv"}, {"transport", "grpc"}}), 0)
      << "series of the other transport exist at zero";
  EXPECT_EQ(Sample(r, "indexcache_index_key_bytes_not_sent_total", {{"role", "prefill"}}), 6000);
  EXPECT_EQ(Sample(r, "indexcache_handoff_duration_seconds", {{"transport", "tcp"}}), 1);
  EXPECT_EQ(Sample(r, "indexcache_handoff_bandwidth_bytes_per_second", {{"transport", "tcp"}}), 1);
  for (const char* reason : {"data_loss", "rejected", "unavailable"}) {
    EXPECT_EQ(Sample(r, "indexcache_handoff_failures_total", {{"transport", "grpc"}, {"reason", reason}}), 1) << reason;
    EXPECT_EQ(Sample(r, "indexcache_handoff_failures_total", {{"transport", "tcp"}, {"reason", reason}}), 0) << reason;
  }
}

TEST(WorkerMetricsTest, KvBlocksAndQueuesFollowTheLoadReport) {
  WorkerMetrics metrics(v1::DECODE, 8, 0);
  v1::WorkerLoad load;
  load.set_total_kv_blocks(100);
  load.set_free_kv_blocks(30);
  load.set_queued_requests(2);
  load.set_running_sequences(5);
  metrics.SetLoad(load);
  const prometheus::Registry& r = *metrics.registry();
  EXPECT_EQ(Sample(r, "indexcache_kv_blocks_used", {{"role", "decode"}}), 70);
  EXPECT_EQ(Sample(r, "indexcache_kv_blocks_free", {{"role", "decode"}}), 30);
  EXPECT_EQ(Sample(r, "indexcache_worker_queued_requests", {{"role", "decode"}}), 2);
  EXPECT_EQ(Sample(r, "indexcache_worker_running_sequences", {{"role", "decode"}}), 5);
}

TEST(WorkerMetricsTest, PrefixCacheCountersAddUpAndBlocksFollowTheLoad) {
  WorkerMetrics metrics(v1::PREFILL, 2, 6);
  const prometheus::Registry& r = *metrics.registry();
  EXPECT_EQ(Sample(r, "indexcache_prefix_cache_blocks", {{"role", "prefill"}, {"state", "idle"}}), 0)
      << "the series exist from the start";
  PrefixCacheStats delta;
  delta.queried_tokens = 100;
  delta.hit_tokens = 64;
  delta.queried_blocks = 6;
  delta.hit_blocks = 4;
  delta.evictions = 3;
  metrics.AddPrefixCache(delta, /*cached=*/10, /*idle=*/7);
  metrics.AddPrefixCache(delta, /*cached=*/12, /*idle=*/2);
  EXPECT_EQ(Sample(r, "indexcache_prefix_cache_queried_tokens_total", {{"role", "prefill"}}), 200);
  EXPECT_EQ(Sample(r, "indexcache_prefix_cache_hit_tokens_total", {{"role", "prefill"}}), 128);
  EXPECT_EQ(Sample(r, "indexcache_prefix_cache_queried_blocks_total", {{"role", "prefill"}}), 12);
  EXPECT_EQ(Sample(r, "indexcache_prefix_cache_hit_blocks_total", {{"role", "prefill"}}), 8);
  EXPECT_EQ(Sample(r, "indexcache_prefix_cache_evictions_total", {{"role", "prefill"}}), 6);
  EXPECT_EQ(Sample(r, "indexcache_prefix_cache_blocks", {{"role", "prefill"}, {"state", "in_use"}}), 10);
  EXPECT_EQ(Sample(r, "indexcache_prefix_cache_blocks", {{"role", "prefill"}, {"state", "idle"}}), 2);
}

}  // namespace
}  // namespace indexcache
