#include "services/common/worker_metrics.h"

#include "common/metrics/build_info_metric.h"

namespace indexcache {
namespace {

using prometheus::BuildCounter;
using prometheus::BuildGauge;
using prometheus::BuildHistogram;
using prometheus::Histogram;

// Why a handoff failed, as few values as an alert needs: the rows were corrupt or did not match
// (data_loss), the peer could not be reached or the stream broke (unavailable), or the decode worker
// refused it for another reason: other model or pattern, no room, protocol violation (rejected).
constexpr const char* kFailureReasons[] = {"data_loss", "unavailable", "rejected"};
// The transports a CPU worker serves; their series exist from the start, at zero.
constexpr v1::HandoffTransport kCpuTransports[] = {v1::HANDOFF_TRANSPORT_GRPC, v1::HANDOFF_TRANSPORT_TCP};
constexpr const char* kPayloads[] = {"kv", "index_keys", "metadata"};

const char* FailureReason(const absl::Status& why) {
  switch (why.code()) {
    case absl::StatusCode::kDataLoss:
      return "data_loss";
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kCancelled:
    case absl::StatusCode::kDeadlineExceeded:
      return "unavailable";
    default:
      return "rejected";
  }
}

// A handoff of the tiny model takes a millisecond on loopback; a long prompt of a large one seconds.
const Histogram::BucketBoundaries kHandoffSecondsBuckets = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                                            0.25,   0.5,   1,      2.5,   5,    10,    30,    60};
// From a loopback gRPC stream of a few kilobytes (latency-bound) to NVLink.
const Histogram::BucketBoundaries kReuseOverlapBucketBounds(kReuseOverlapBuckets.begin(), kReuseOverlapBuckets.end());
const Histogram::BucketBoundaries kBandwidthBuckets = {1e5, 1e6, 1e7, 5e7, 1e8, 2.5e8, 5e8, 1e9,
                                                       2.5e9, 5e9, 1e10, 2.5e10, 5e10, 1e11};

}  // namespace

const char* TransportLabel(v1::HandoffTransport transport) {
  switch (transport) {
    case v1::HANDOFF_TRANSPORT_TCP:
      return "tcp";
    case v1::HANDOFF_TRANSPORT_NCCL:
      return "nccl";
    default:
      return "grpc";
  }
}

WorkerMetrics::WorkerMetrics(v1::WorkerRole role, int32_t full_layers, int32_t shared_layers,
                             const std::vector<std::pair<int32_t, std::string>>& patterns)
    : role_(role == v1::PREFILL ? "prefill" : "decode"),
      full_layers_(full_layers),
      shared_layers_(shared_layers),
      registry_(std::make_shared<prometheus::Registry>()),
      kv_blocks_used_(BuildGauge()
                          .Name("indexcache_kv_blocks_used")
                          .Help("KV cache blocks held by requests")
                          .Register(*registry_)
                          .Add({{"role", role_}})),
      kv_blocks_free_(BuildGauge()
                          .Name("indexcache_kv_blocks_free")
                          .Help("KV cache blocks free")
                          .Register(*registry_)
                          .Add({{"role", role_}})),
      queued_requests_(BuildGauge()
                           .Name("indexcache_worker_queued_requests")
                           .Help("Requests admitted and waiting: prefill calls in flight (prefill), requests "
                                 "waiting for KV blocks (decode)")
                           .Register(*registry_)
                           .Add({{"role", role_}})),
      running_sequences_(BuildGauge()
                             .Name("indexcache_worker_running_sequences")
                             .Help("Sequences the engine holds: prompts in prefill (prefill), sequences importing "
                                   "or generating (decode)")
                             .Register(*registry_)
                             .Add({{"role", role_}})),
      indexer_runs_(BuildCounter()
                        .Name("indexcache_indexer_runs_total")
                        .Help("Lightning-indexer runs, one per (Full layer, token)")
                        .Register(*registry_)
                        .Add({{"role", role_}})),
      indexer_skips_(BuildCounter()
                         .Name("indexcache_indexer_skips_total")
                         .Help("Indexer runs skipped by Shared layers, one per (Shared layer, token)")
                         .Register(*registry_)
                         .Add({{"role", role_}})),
      indexer_seconds_(BuildCounter()
                           .Name("indexcache_indexer_seconds_total")
                           .Help("Seconds the Full layers' indexers took, as the backend measures them")
                           .Register(*registry_)
                           .Add({{"role", role_}})),
      forward_seconds_(BuildCounter()
                           .Name("indexcache_forward_seconds_total")
                           .Help("Seconds of forward passes (the whole model, logits read back)")
                           .Register(*registry_)
                           .Add({{"role", role_}})),
      index_key_bytes_not_stored_(BuildCounter()
                                      .Name("indexcache_index_key_bytes_not_stored_total")
                                      .Help("Index-key cache bytes Shared layers never wrote")
                                      .Register(*registry_)
                                      .Add({{"role", role_}})),
      index_key_bytes_not_sent_(BuildCounter()
                                    .Name("indexcache_index_key_bytes_not_sent_total")
                                    .Help("Index-key bytes a handoff did not carry because their layers are Shared "
                                          "(prefill: not sent; decode: not received)")
                                    .Register(*registry_)
                                    .Add({{"role", role_}})),
      prefix_queried_tokens_(BuildCounter()
                                 .Name("indexcache_prefix_cache_queried_tokens_total")
                                 .Help("Tokens of the requests looked up in the prefix cache")
                                 .Register(*registry_)
                                 .Add({{"role", role_}})),
      prefix_hit_tokens_(BuildCounter()
                             .Name("indexcache_prefix_cache_hit_tokens_total")
                             .Help("Looked-up tokens found in cached KV blocks (not computed again)")
                             .Register(*registry_)
                             .Add({{"role", role_}})),
      prefix_queried_blocks_(BuildCounter()
                                 .Name("indexcache_prefix_cache_queried_blocks_total")
                                 .Help("Full KV blocks of the requests looked up in the prefix cache")
                                 .Register(*registry_)
                                 .Add({{"role", role_}})),
      prefix_hit_blocks_(BuildCounter()
                             .Name("indexcache_prefix_cache_hit_blocks_total")
                             .Help("Looked-up KV blocks found in the prefix cache")
                             .Register(*registry_)
                             .Add({{"role", role_}})),
      prefix_evictions_(BuildCounter()
                            .Name("indexcache_prefix_cache_evictions_total")
                            .Help("Idle cached KV blocks evicted to make room for an allocation")
                            .Register(*registry_)
                            .Add({{"role", role_}})),
      prefix_blocks_(BuildGauge()
                         .Name("indexcache_prefix_cache_blocks")
                         .Help("KV blocks findable in the prefix cache, by state: in_use (held by a request), "
                               "idle (held by none, counted free, evicted on demand)")
                         .Register(*registry_)),
      estimated_speedup_(BuildGauge()
                             .Name("indexcache_estimated_speedup_vs_all_full")
                             .Help("ESTIMATE since start: forward time had every Shared layer run its indexer at "
                                   "the measured mean cost per run, divided by the measured forward time")
                             .Register(*registry_)
                             .Add({{"role", role_}})),
      reuse_telemetry_passes_(BuildCounter()
                                  .Name("indexcache_reuse_telemetry_passes_total")
                                  .Help("Forward passes in which Shared layers also ran their own indexer to "
                                        "measure the reuse (--reuse-telemetry-rate)")
                                  .Register(*registry_)
                                  .Add({{"role", role_}})),
      reuse_topk_overlap_(BuildHistogram()
                              .Name("indexcache_reuse_topk_overlap")
                              .Help("Per sampled query row of a Shared layer: the share of the top-k its own "
                                    "indexer picks that the reused top-k also holds; _count is the rows measured")
                              .Register(*registry_)),
      handoff_bytes_(BuildCounter()
                         .Name("indexcache_handoff_bytes_total")
                         .Help("Handoff bytes by payload (kv, index_keys, metadata) and transport; prefill: sent, "
                               "decode: received")
                         .Register(*registry_)),
      handoff_send_seconds_(BuildCounter()
                                .Name("indexcache_handoff_send_seconds_total")
                                .Help("Prefill: seconds spent sealing and writing handoff chunks, not waiting for "
                                      "the compute; bytes_total / this is the transport's rate while it had data")
                                .Register(*registry_)),
      handoff_duration_(BuildHistogram()
                            .Name("indexcache_handoff_duration_seconds")
                            .Help("Handoff time from the first chunk to the decode worker's verdict")
                            .Register(*registry_)),
      handoff_bandwidth_(BuildHistogram()
                             .Name("indexcache_handoff_bandwidth_bytes_per_second")
                             .Help("Bytes of a completed handoff divided by its duration")
                             .Register(*registry_)),
      handoff_failures_(BuildCounter()
                            .Name("indexcache_handoff_failures_total")
                            .Help("Failed handoffs by reason (data_loss, unavailable, rejected)")
                            .Register(*registry_)) {
  auto& layers = BuildGauge()
                     .Name("indexcache_layers")
                     .Help("Layers of the IndexCache pattern this worker runs, by kind (full, shared)")
                     .Register(*registry_);
  layers.Add({{"role", role_}, {"kind", "full"}}).Set(full_layers);
  layers.Add({{"role", role_}, {"kind", "shared"}}).Set(shared_layers);
  auto& pattern_requests =
      BuildCounter()
          .Name("indexcache_pattern_requests_total")
          .Help("Requests admitted per IndexCache pattern (--length-patterns: each prompt runs the pattern of "
                "the last threshold its length reaches, min_prompt_tokens)")
          .Register(*registry_);
  for (const auto& [min_prompt_tokens, pattern] : patterns) {
    pattern_requests_.push_back(&pattern_requests.Add(
        With({{"pattern", pattern}, {"min_prompt_tokens", std::to_string(min_prompt_tokens)}})));
  }
  estimated_speedup_.Set(1.0);
  for (const char* state : {"in_use", "idle"}) prefix_blocks_.Add(With({{"state", state}}));
  // Every series a dashboard or alert reads exists from the start, at zero.
  for (v1::HandoffTransport transport : kCpuTransports) {
    const std::string t = TransportLabel(transport);
    for (const char* payload : kPayloads) handoff_bytes_.Add(With({{"payload", payload}, {"transport", t}}));
    handoff_duration_.Add(With({{"transport", t}}), kHandoffSecondsBuckets);
    handoff_bandwidth_.Add(With({{"transport", t}}), kBandwidthBuckets);
    for (const char* reason : kFailureReasons) handoff_failures_.Add(With({{"reason", reason}, {"transport", t}}));
  }
  RegisterBuildInfo(*registry_);
}

prometheus::Labels WorkerMetrics::With(std::initializer_list<std::pair<const std::string, std::string>> labels) const {
  prometheus::Labels out(labels);
  out.emplace("role", role_);
  return out;
}

void WorkerMetrics::AddEngineStats(const IndexCacheStats& delta) {
  std::lock_guard<std::mutex> lock(mu_);
  totals_ += delta;
  indexer_runs_.Increment(static_cast<double>(delta.indexer_runs));
  indexer_skips_.Increment(static_cast<double>(delta.indexer_skips));
  indexer_seconds_.Increment(delta.indexer_seconds);
  forward_seconds_.Increment(delta.forward_seconds);
  index_key_bytes_not_stored_.Increment(static_cast<double>(delta.index_key_bytes_not_stored));
  reuse_telemetry_passes_.Increment(static_cast<double>(delta.reuse_telemetry_passes));
  for (size_t p = 0; p < delta.pattern_requests.size() && p < pattern_requests_.size(); ++p) {
    pattern_requests_[p]->Increment(static_cast<double>(delta.pattern_requests[p]));
  }
  for (size_t layer = 0; layer < delta.reuse_overlap.size(); ++layer) {
    const ReuseOverlap& overlap = delta.reuse_overlap[layer];
    if (overlap.rows == 0) continue;
    std::vector<double> increments(overlap.buckets.begin(), overlap.buckets.end());
    increments.push_back(0.0);  // +Inf: no overlap exceeds 1
    reuse_topk_overlap_.Add(With({{"layer", std::to_string(layer)}}), kReuseOverlapBucketBounds)
        .ObserveMultiple(increments, overlap.sum);
  }
  if (totals_.forward_seconds > 0 && totals_.indexer_runs > 0) {
    const double per_run = totals_.indexer_seconds / static_cast<double>(totals_.indexer_runs);
    const double all_full = totals_.forward_seconds + per_run * static_cast<double>(totals_.indexer_skips);
    estimated_speedup_.Set(all_full / totals_.forward_seconds);
  }
}

double WorkerMetrics::estimated_speedup() const { return estimated_speedup_.Value(); }

void WorkerMetrics::SetLoad(const v1::WorkerLoad& load) {
  kv_blocks_used_.Set(load.total_kv_blocks() - load.free_kv_blocks());
  kv_blocks_free_.Set(load.free_kv_blocks());
  queued_requests_.Set(load.queued_requests());
  running_sequences_.Set(load.running_sequences());
}

void WorkerMetrics::AddPrefixCache(const PrefixCacheStats& delta, int32_t cached, int32_t idle) {
  prefix_queried_tokens_.Increment(static_cast<double>(delta.queried_tokens));
  prefix_hit_tokens_.Increment(static_cast<double>(delta.hit_tokens));
  prefix_queried_blocks_.Increment(static_cast<double>(delta.queried_blocks));
  prefix_hit_blocks_.Increment(static_cast<double>(delta.hit_blocks));
  prefix_evictions_.Increment(static_cast<double>(delta.evictions));
  prefix_blocks_.Add(With({{"state", "in_use"}})).Set(cached - idle);
  prefix_blocks_.Add(With({{"state", "idle"}})).Set(idle);
}

void WorkerMetrics::AddHandoffBytes(v1::HandoffTransport transport, const HandoffByteCounts& bytes) {
  const std::string t = TransportLabel(transport);
  handoff_bytes_.Add(With({{"payload", "kv"}, {"transport", t}})).Increment(static_cast<double>(bytes.latent_bytes));
  handoff_bytes_.Add(With({{"payload", "index_keys"}, {"transport", t}}))
      .Increment(static_cast<double>(bytes.index_key_bytes));
  handoff_bytes_.Add(With({{"payload", "metadata"}, {"transport", t}}))
      .Increment(static_cast<double>(bytes.metadata_bytes));
  // Every layer's index-key rows have the same size, so the Shared layers' rows that never travel
  // weigh (index-key bytes of the Full layers) / full × shared.
  if (full_layers_ > 0) {
    index_key_bytes_not_sent_.Increment(static_cast<double>(bytes.index_key_bytes) / full_layers_ * shared_layers_);
  }
}

void WorkerMetrics::AddHandoffSendTime(v1::HandoffTransport transport, absl::Duration duration) {
  handoff_send_seconds_.Add(With({{"transport", TransportLabel(transport)}})).Increment(absl::ToDoubleSeconds(duration));
}

void WorkerMetrics::ObserveHandoff(v1::HandoffTransport transport, absl::Duration duration, uint64_t bytes) {
  const std::string t = TransportLabel(transport);
  const double seconds = absl::ToDoubleSeconds(duration);
  handoff_duration_.Add(With({{"transport", t}}), kHandoffSecondsBuckets).Observe(seconds);
  if (seconds > 0) {
    handoff_bandwidth_.Add(With({{"transport", t}}), kBandwidthBuckets).Observe(static_cast<double>(bytes) / seconds);
  }
}

void WorkerMetrics::CountHandoffFailure(v1::HandoffTransport transport, const absl::Status& why) {
  handoff_failures_.Add(With({{"reason", FailureReason(why)}, {"transport", TransportLabel(transport)}})).Increment();
}

}  // namespace indexcache
