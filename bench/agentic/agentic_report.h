// The agentic benchmark's report: per run (prefix cache off, then on) the client-side TTFT, turns
// completed / failed / not sent, prompt tokens sent against the prefix cache hits the prefill workers
// counted (the prefill tokens actually computed), session affinity and load per worker from each turn's
// FinalInfo, and the router's routing decisions; then the off/on ratios. JSON for tools, markdown for
// people, the markdown written from the JSON so the two never disagree.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "bench/agentic/agentic_replay.h"
#include "bench/agentic/cluster_counters.h"
#include "bench/serving/local_cluster.h"
#include "nlohmann/json.hpp"

namespace indexcache::bench {

// One replay of the trace on a fresh cluster.
struct AgenticRun {
  bool prefix_cache = false;
  int block_size = 0;  // the workers' KV block: the prefix cache matches whole blocks
  ReplayResult replay;
  absl::StatusOr<ClusterCounters> counters;  // after the replay minus before it
  std::vector<LocalWorker> workers;
  std::vector<std::string> command_lines;
};

nlohmann::json RunJson(const AgenticRun& run);

// Prefix cache off over on: TTFT p50 and p99, prefill tokens computed.
nlohmann::json ComparisonJson(const nlohmann::json& off, const nlohmann::json& on);

// `report`: the run header (date, machine, commit, commands, trace, cluster), "runs" and "comparison".
std::string ReportMarkdown(const nlohmann::json& report);

}  // namespace indexcache::bench
