// The benchmark's report: one JSON document (every number, for tools) and a markdown page (tables for
// people: rates next to the BLAS ceiling, IndexCache speedups, a roofline floor for every case).
// The first pattern in `patterns` is the baseline the others' speedups are taken against.
#pragma once

#include <string>
#include <vector>

#include "bench/engine_runs.h"
#include "bench/machine_ceilings.h"
#include "common/model/model_config.h"
#include "nlohmann/json.hpp"

namespace indexcache::bench {

struct RunInfo {
  std::string date;       // UTC, ISO 8601
  std::string cpu_model;  // /proc/cpuinfo "model name"
  int logical_cores = 0;
  std::string git_commit;
  std::string command_line;
  std::string omp_wait_policy;  // the environment's value ("" = unset)
  std::string load_before;      // /proc/loadavg before and after: the machine is shared
  std::string load_after;
  std::string model_dir;
  int32_t max_batch_tokens = 0;
  double total_seconds = 0.0;
};

// Fills the fields the process can read itself (date, CPU, cores, OMP_WAIT_POLICY, load).
RunInfo ProbeMachine();
std::string LoadAverage();

nlohmann::json ReportJson(const RunInfo& info, const MachineCeilings& ceilings, const ModelConfig& config,
                          const std::vector<PatternResults>& patterns);
std::string ReportMarkdown(const RunInfo& info, const MachineCeilings& ceilings, const ModelConfig& config,
                           const std::vector<PatternResults>& patterns);

}  // namespace indexcache::bench
