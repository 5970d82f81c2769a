// The benchmark's report: one JSON document (every number, for tools) and a markdown page (tables for
// people: rates next to the BLAS ceiling, IndexCache speedups, a roofline floor for every case).
// The first pattern in `patterns` is the baseline the others' speedups are taken against.
#pragma once

#include <string>
#include <vector>

#include "bench/engine_runs.h"
#include "bench/machine_ceilings.h"
#include "bench/run_info.h"
#include "common/model/model_config.h"
#include "nlohmann/json.hpp"

namespace indexcache::bench {

nlohmann::json ReportJson(const RunInfo& info, const MachineCeilings& ceilings, const ModelConfig& config,
                          const std::vector<PatternResults>& patterns);
std::string ReportMarkdown(const RunInfo& info, const MachineCeilings& ceilings, const ModelConfig& config,
                           const std::vector<PatternResults>& patterns);

}  // namespace indexcache::bench
