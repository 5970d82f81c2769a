// IndexCache's training-free layer selection (arXiv 2603.12201): start from all-Full and, one step
// at a time, make Shared the layer whose change raises the calibration loss least, until `keep` layers
// keep their indexer. Layer 0 stays Full (a Shared layer needs an earlier Full layer). Exact ties go to
// the lowest layer.
//
// Cost: making layer j Shared leaves layers < j unchanged, so each step runs every window once under
// the current pattern (capturing what enters each layer) and then each candidate j from layer j on.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/statusor.h"
#include "common/search/calibration_set.h"
#include "common/search/pattern_scorer.h"

namespace indexcache {

// One point of the search path: step 0 is all-Full; step s made `layer` Shared.
struct SearchStep {
  int32_t step = 0;
  int32_t layer = -1;  // -1 for step 0
  std::vector<IndexerType> pattern;
  double loss = 0.0;  // the calibration objective under `pattern` (CalibrationNll::Loss: mean −log p)
};

// Where a running search is. Work is counted in layer passes over calibration tokens (a candidate
// resumed at layer j costs layers − j, plus one for the output head), which makes the ETA honest about
// late candidates being cheaper than early ones.
struct SearchProgress {
  int32_t step = 0;  // 1-based, of num_steps
  int32_t num_steps = 0;
  int32_t window = 0;  // 1-based, of num_windows
  int32_t num_windows = 0;
  int64_t candidates_done = 0;  // this step's (candidate, window) evaluations done
  int64_t candidates_total = 0;
  double elapsed_seconds = 0.0;
  double eta_seconds = 0.0;  // for the whole search (later steps estimated)
};

struct LayerSearchOptions {
  int32_t keep = 1;                                        // Full layers at the end, 1..num_layers
  std::function<void(const SearchStep&)> on_step;          // step 0 first, then each step as it completes
  std::function<void(const SearchProgress&)> on_progress;  // after every evaluation
};

// Returns the path: step 0 (all-Full) and one entry per layer made Shared; the last is the result.
absl::StatusOr<std::vector<SearchStep>> GreedyLayerSearch(PatternScorer& scorer, const CalibrationSet& calibration,
                                                          const LayerSearchOptions& options);

}  // namespace indexcache
