// The counters the agentic benchmark reads from a running LocalCluster's /metrics, before and after a
// replay: each worker's prefix cache lookups (services/common/worker_metrics.cc), the router's stream
// migrations by reason (a migrated stream is prefilled again, its prompt looked up twice, yet the client
// sees one turn) and, where the router exports it, its routing decisions by role and basis.
#pragma once

#include <map>
#include <string>

#include "absl/status/statusor.h"
#include "bench/serving/local_cluster.h"
#include "nlohmann/json.hpp"

namespace indexcache::bench {

// One worker's indexcache_prefix_cache_*_total counters.
struct PrefixCacheCounters {
  double queried_tokens = 0, hit_tokens = 0;
  double queried_blocks = 0, hit_blocks = 0;
  double evictions = 0;
  PrefixCacheCounters operator-(const PrefixCacheCounters& o) const;
  PrefixCacheCounters& operator+=(const PrefixCacheCounters& o);
};

nlohmann::json PrefixCacheJson(const PrefixCacheCounters& c);

// indexcache_router_routing_decisions_total{role, basis}: "role/basis" -> count. `exposed` is false
// when the router does not export the metric (a router from before it was added).
struct RoutingDecisions {
  bool exposed = false;
  std::map<std::string, double> by_role_basis;
  RoutingDecisions operator-(const RoutingDecisions& o) const;
};

nlohmann::json RoutingDecisionsJson(const RoutingDecisions& d);

struct ClusterCounters {
  std::map<std::string, PrefixCacheCounters> prefix_cache;  // by worker id
  std::map<std::string, double> migrations;                 // indexcache_router_migrations_total by reason
  RoutingDecisions routing;
  ClusterCounters operator-(const ClusterCounters& o) const;
};

// Every worker's and the router's counters now; the cluster must serve its /metrics (serve_metrics).
absl::StatusOr<ClusterCounters> ScrapeClusterCounters(const LocalCluster& cluster);

}  // namespace indexcache::bench
