// Reading a service's Prometheus /metrics from a benchmark: one HTTP/1.0 GET over a plain socket, and
// the sum of a metric's samples that carry given labels. Enough for counters the services export
// (indexcache_handoff_bytes_total{payload, role, transport}); not a general exposition parser.
#pragma once

#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace indexcache::bench {

// The body of GET `path` from `host_port` ("127.0.0.1:9100").
absl::StatusOr<std::string> HttpGet(const std::string& host_port, const std::string& path);

// Sum of the samples of `metric` (the exact name before '{' or ' ') whose label set contains every
// entry of `labels`, each written as in the exposition: `payload="kv"`.
double SumSamples(std::string_view exposition, std::string_view metric, const std::vector<std::string>& labels);

// The samples of `metric` summed by the value of their label `label` (`reason` of
// indexcache_router_migrations_total{reason="decode_failed"}); samples without it are left out.
std::map<std::string, double> SumByLabel(std::string_view exposition, std::string_view metric, std::string_view label);

// Whether the exposition declares `metric` (a `# TYPE` line) or carries a sample of it: a counter with
// labels has no sample until its first increment, yet is exported.
bool HasMetric(std::string_view exposition, std::string_view metric);

}  // namespace indexcache::bench
