#include "bench/agentic/cluster_counters.h"

#include <string_view>

#include "absl/strings/str_cat.h"
#include "bench/cluster/metrics_scrape.h"
#include "common/util/status_macros.h"

namespace indexcache::bench {
namespace {

constexpr std::string_view kRoutingDecisions = "indexcache_router_routing_decisions_total";
// The bases the router is being taught (issue 16); a basis outside them is still counted, as "other".
constexpr const char* kBases[] = {"prefix", "load", "load_over_prefix"};

PrefixCacheCounters ParsePrefixCache(std::string_view text) {
  auto sum = [&](std::string_view metric) { return SumSamples(text, metric, {}); };
  return {sum("indexcache_prefix_cache_queried_tokens_total"), sum("indexcache_prefix_cache_hit_tokens_total"),
          sum("indexcache_prefix_cache_queried_blocks_total"), sum("indexcache_prefix_cache_hit_blocks_total"),
          sum("indexcache_prefix_cache_evictions_total")};
}

RoutingDecisions ParseRoutingDecisions(std::string_view text) {
  RoutingDecisions d;
  d.exposed = HasMetric(text, kRoutingDecisions);
  if (!d.exposed) return d;
  for (const char* role : {"prefill", "decode"}) {
    const std::string role_label = absl::StrCat("role=\"", role, "\"");
    double known = 0;
    for (const char* basis : kBases) {
      const double n = SumSamples(text, kRoutingDecisions, {role_label, absl::StrCat("basis=\"", basis, "\"")});
      d.by_role_basis[absl::StrCat(role, "/", basis)] = n;
      known += n;
    }
    d.by_role_basis[absl::StrCat(role, "/other")] = SumSamples(text, kRoutingDecisions, {role_label}) - known;
  }
  return d;
}

}  // namespace

PrefixCacheCounters PrefixCacheCounters::operator-(const PrefixCacheCounters& o) const {
  return {queried_tokens - o.queried_tokens, hit_tokens - o.hit_tokens, queried_blocks - o.queried_blocks,
          hit_blocks - o.hit_blocks, evictions - o.evictions};
}

PrefixCacheCounters& PrefixCacheCounters::operator+=(const PrefixCacheCounters& o) {
  queried_tokens += o.queried_tokens;
  hit_tokens += o.hit_tokens;
  queried_blocks += o.queried_blocks;
  hit_blocks += o.hit_blocks;
  evictions += o.evictions;
  return *this;
}

nlohmann::json PrefixCacheJson(const PrefixCacheCounters& c) {
  return {{"queried_tokens", static_cast<int64_t>(c.queried_tokens)},
          {"hit_tokens", static_cast<int64_t>(c.hit_tokens)},
          {"queried_blocks", static_cast<int64_t>(c.queried_blocks)},
          {"hit_blocks", static_cast<int64_t>(c.hit_blocks)},
          {"evictions", static_cast<int64_t>(c.evictions)},
          {"token_hit_rate", c.queried_tokens > 0 ? c.hit_tokens / c.queried_tokens : 0.0},
          {"block_hit_rate", c.queried_blocks > 0 ? c.hit_blocks / c.queried_blocks : 0.0}};
}

RoutingDecisions RoutingDecisions::operator-(const RoutingDecisions& o) const {
  RoutingDecisions d = *this;
  for (auto& [key, n] : d.by_role_basis) {
    auto before = o.by_role_basis.find(key);
    if (before != o.by_role_basis.end()) n -= before->second;
  }
  return d;
}

nlohmann::json RoutingDecisionsJson(const RoutingDecisions& d) {
  if (!d.exposed) return "not exposed";
  nlohmann::json out = nlohmann::json::object();
  for (const auto& [key, n] : d.by_role_basis) out[key] = static_cast<int64_t>(n);
  return out;
}

ClusterCounters ClusterCounters::operator-(const ClusterCounters& o) const {
  ClusterCounters d = *this;
  for (auto& [worker, counters] : d.prefix_cache) {
    auto before = o.prefix_cache.find(worker);
    if (before != o.prefix_cache.end()) counters = counters - before->second;
  }
  for (auto& [reason, n] : d.migrations) {
    auto before = o.migrations.find(reason);
    if (before != o.migrations.end()) n -= before->second;
  }
  d.routing = routing - o.routing;
  return d;
}

absl::StatusOr<ClusterCounters> ScrapeClusterCounters(const LocalCluster& cluster) {
  ClusterCounters c;
  for (const LocalWorker& w : cluster.workers()) {
    if (w.metrics.empty()) return absl::FailedPreconditionError(absl::StrCat(w.id, " serves no /metrics"));
    ASSIGN_OR_RETURN(const std::string text, HttpGet(w.metrics, "/metrics"));
    c.prefix_cache[w.id] = ParsePrefixCache(text);
  }
  if (cluster.router_metrics().empty()) return absl::FailedPreconditionError("the router serves no /metrics");
  ASSIGN_OR_RETURN(const std::string router_text, HttpGet(cluster.router_metrics(), "/metrics"));
  c.migrations = SumByLabel(router_text, "indexcache_router_migrations_total", "reason");
  c.routing = ParseRoutingDecisions(router_text);
  return c;
}

}  // namespace indexcache::bench
