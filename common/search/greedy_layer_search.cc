#include "common/search/greedy_layer_search.h"

#include <algorithm>
#include <chrono>

#include "absl/strings/str_format.h"
#include "common/util/status_macros.h"

namespace indexcache {
namespace {

using Clock = std::chrono::steady_clock;

// Layers that can still be made Shared: every Full layer but layer 0.
std::vector<int32_t> Candidates(const std::vector<IndexerType>& pattern) {
  std::vector<int32_t> layers;
  for (int32_t l = 1; l < static_cast<int32_t>(pattern.size()); ++l) {
    if (pattern[l] == IndexerType::kFull) layers.push_back(l);
  }
  return layers;
}

// One sequence the objective scores: a calibration window (every prediction) or a retrieval case
// (its answer's).
struct Scored {
  const std::vector<int32_t>* tokens;
  int32_t first_target;
  bool answer;
};

std::vector<Scored> ScoredSequences(const CalibrationSet& set) {
  std::vector<Scored> scored;
  for (const auto& window : set.windows) scored.push_back({&window, 1, false});
  for (const RetrievalCase& c : set.retrieval) scored.push_back({&c.tokens, c.answer_begin, true});
  return scored;
}

// Work of a pass from `first_layer` over `tokens` tokens: its layers plus the output head.
double PassCost(int32_t num_layers, int32_t first_layer, int64_t tokens) {
  return static_cast<double>(num_layers - first_layer + 1) * static_cast<double>(tokens);
}

// Work of a whole step (from `step` of `num_steps`) and of the steps after it. Later steps' candidate
// sets are not known yet: each has one candidate fewer, at this step's mean candidate cost.
double WorkFromStep(int32_t num_layers, const std::vector<int32_t>& candidates, int64_t tokens, int32_t step,
                    int32_t num_steps) {
  const double base = PassCost(num_layers, 0, tokens);
  double this_step = base;
  for (int32_t j : candidates) this_step += PassCost(num_layers, j, tokens);
  const double mean_candidate = (this_step - base) / static_cast<double>(candidates.size());
  double later = 0.0;
  for (int32_t k = 1; k <= num_steps - step; ++k) {
    later += base + mean_candidate * static_cast<double>(candidates.size() - k);
  }
  return this_step + later;
}

}  // namespace

absl::StatusOr<std::vector<SearchStep>> GreedyLayerSearch(PatternScorer& scorer, const CalibrationSet& calibration,
                                                          const LayerSearchOptions& options) {
  const int32_t num_layers = scorer.config().num_layers;
  if (options.keep < 1) {
    return absl::InvalidArgumentError(
        absl::StrFormat("keep must be at least 1 (layer 0 always keeps its indexer), got %d", options.keep));
  }
  if (options.keep > num_layers) {
    return absl::InvalidArgumentError(
        absl::StrFormat("keep %d exceeds the model's %d layers", options.keep, num_layers));
  }
  if (calibration.windows.empty()) return absl::InvalidArgumentError("the calibration set is empty");
  const std::vector<Scored> sequences = ScoredSequences(calibration);
  int64_t tokens = 0;
  for (const Scored& s : sequences) tokens += static_cast<int64_t>(s.tokens->size());

  std::vector<IndexerType> pattern(num_layers, IndexerType::kFull);
  std::vector<SearchStep> path;
  auto record = [&](SearchStep step) {
    if (options.on_step) options.on_step(step);
    path.push_back(std::move(step));
  };
  const int32_t num_steps = num_layers - options.keep;
  if (num_steps == 0) {
    ASSIGN_OR_RETURN(double loss, scorer.MeanLoss(calibration, pattern));
    record({0, -1, pattern, loss});
    return path;
  }

  const Clock::time_point start = Clock::now();
  const int32_t num_windows = static_cast<int32_t>(sequences.size());
  const double weight = calibration.retrieval_weight;
  double work_done = 0.0;
  for (int32_t step = 1; step <= num_steps; ++step) {
    const std::vector<int32_t> candidates = Candidates(pattern);
    const double work_total = work_done + WorkFromStep(num_layers, candidates, tokens, step, num_steps);
    CalibrationNll current;  // the current pattern's (the previous step's pick, recomputed in full)
    std::vector<CalibrationNll> candidate_nll(candidates.size());
    std::vector<LayerInput> inputs;
    for (int32_t w = 0; w < num_windows; ++w) {
      const Scored& scored = sequences[w];
      const std::vector<int32_t>& window = *scored.tokens;
      const int64_t n = static_cast<int64_t>(window.size());
      ASSIGN_OR_RETURN(WindowNll base, scorer.Score(window, pattern, &inputs, scored.first_target));
      (scored.answer ? current.answers : current.text) += base;
      work_done += PassCost(num_layers, 0, n);
      for (size_t c = 0; c < candidates.size(); ++c) {
        const int32_t layer = candidates[c];
        std::vector<IndexerType> trial = pattern;
        trial[layer] = IndexerType::kShared;
        ASSIGN_OR_RETURN(WindowNll nll, scorer.ScoreFrom(window, trial, layer, inputs[layer], scored.first_target));
        (scored.answer ? candidate_nll[c].answers : candidate_nll[c].text) += nll;
        work_done += PassCost(num_layers, layer, n);
        if (options.on_progress) {
          const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
          options.on_progress(
              {step, num_steps, w + 1, num_windows,
               static_cast<int64_t>(w) * static_cast<int64_t>(candidates.size()) + static_cast<int64_t>(c) + 1,
               static_cast<int64_t>(candidates.size()) * num_windows, elapsed,
               elapsed / work_done * std::max(0.0, work_total - work_done)});
        }
      }
    }
    if (step == 1) record({0, -1, pattern, current.Loss(weight)});
    size_t best = 0;
    for (size_t c = 1; c < candidates.size(); ++c) {
      if (candidate_nll[c].Loss(weight) < candidate_nll[best].Loss(weight)) best = c;
    }
    pattern[candidates[best]] = IndexerType::kShared;
    record({step, candidates[best], pattern, candidate_nll[best].Loss(weight)});
  }
  return path;
}

}  // namespace indexcache
