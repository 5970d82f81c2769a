// Language-modeling loss of one model under many IndexCache patterns, without reloading: the model is
// loaded with every indexer (all-Full), and each forward batch names the pattern it runs with. A window
// runs as one batch from position 0 of a cache sequence reserved for the longest window.
//
// A pattern that changes only layers ≥ j computes exactly what the base pattern computes before j, so
// ScoreFrom resumes at j from the layer inputs a base pass captured (the greedy search's saving).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/backend/backend.h"
#include "common/kv/paged_kv_cache.h"
#include "common/model/dsa_model.h"
#include "common/search/calibration_set.h"

namespace indexcache {

struct PatternScorerOptions {
  std::string model_dir;
  std::string device = "cpu";
  int num_threads = 0;         // 0: all cores
  int32_t longest_window = 0;  // tokens; sizes the cache
};

// Σ over a window's predictions of −log p(next token), and how many predictions that is.
struct WindowNll {
  double sum = 0.0;
  int64_t count = 0;
  WindowNll& operator+=(const WindowNll& other) {
    sum += other.sum;
    count += other.count;
    return *this;
  }
};

// The layer search's objective over a CalibrationSet: the windows' mean NLL, plus the retrieval
// weight × the answers' mean NLL when the set has retrieval cases.
struct CalibrationNll {
  WindowNll text;
  WindowNll answers;
  double Loss(double retrieval_weight) const;
};

class PatternScorer {
 public:
  // Fails when the checkpoint lacks some layer's indexer weights (a search starts from all-Full) or
  // the longest window exceeds the model's positions.
  static absl::StatusOr<std::unique_ptr<PatternScorer>> Create(const PatternScorerOptions& options);

  const ModelConfig& config() const { return model_->config(); }

  // The whole pass under `pattern`; when `layer_inputs` is given, what entered every layer. The NLL
  // counts the predictions of the tokens from `first_target` on (1: all; a retrieval case's
  // answer_begin: its answer's).
  absl::StatusOr<WindowNll> Score(const std::vector<int32_t>& window, const std::vector<IndexerType>& pattern,
                                  std::vector<LayerInput>* layer_inputs = nullptr, int32_t first_target = 1);
  // The pass from `first_layer` on, from `input` = what entered it under a pattern that agrees with
  // `pattern` on every earlier layer (captured by Score on the same window).
  absl::StatusOr<WindowNll> ScoreFrom(const std::vector<int32_t>& window, const std::vector<IndexerType>& pattern,
                                      int32_t first_layer, const LayerInput& input, int32_t first_target = 1);
  // The objective over the whole set (CalibrationNll::Loss): without retrieval cases, the mean −log p
  // over every prediction (token-weighted, as `indexcache perplexity` averages).
  absl::StatusOr<double> MeanLoss(const CalibrationSet& set, const std::vector<IndexerType>& pattern);

 private:
  PatternScorer() = default;
  absl::StatusOr<WindowNll> Run(const std::vector<int32_t>& window, ForwardBatch batch,
                                std::vector<LayerInput>* layer_inputs, int32_t first_target);

  std::unique_ptr<Backend> backend_;
  std::unique_ptr<DsaModel> model_;
  std::unique_ptr<PagedKvCache> cache_;
  int32_t longest_window_ = 0;
};

}  // namespace indexcache
