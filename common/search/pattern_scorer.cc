#include "common/search/pattern_scorer.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/util/status_macros.h"

namespace indexcache {
namespace {

// The one cache sequence every window runs in.
constexpr SequenceId kWindowSequence = 0;
constexpr int32_t kBlockSize = 64;

// −log softmax(logits)[target] in double: log Σ exp(logit − max) + max − logit[target].
double NextTokenNll(const float* logits, int32_t vocab, int32_t target) {
  const double max_logit = *std::max_element(logits, logits + vocab);
  double sum = 0.0;
  for (int32_t v = 0; v < vocab; ++v) sum += std::exp(static_cast<double>(logits[v]) - max_logit);
  return std::log(sum) + max_logit - static_cast<double>(logits[target]);
}

}  // namespace

absl::StatusOr<std::unique_ptr<PatternScorer>> PatternScorer::Create(const PatternScorerOptions& o) {
  if (o.longest_window < 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("a calibration window needs at least 2 tokens, got ", o.longest_window));
  }
  std::unique_ptr<PatternScorer> scorer(new PatternScorer());
  ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(o.model_dir));
  if (o.longest_window > config.max_position_embeddings) {
    return absl::InvalidArgumentError(
        absl::StrFormat("calibration windows of %d tokens exceed the model's %d positions", o.longest_window,
                        config.max_position_embeddings));
  }
  config.indexer_types.assign(config.num_layers, IndexerType::kFull);
  ASSIGN_OR_RETURN(scorer->backend_, CreateBackend(o.device, o.num_threads));
  auto model = DsaModel::Load(o.model_dir, std::move(config), scorer->backend_.get());
  if (!model.ok()) {
    return Annotate(model.status(), "the layer search starts from all-Full, so every layer needs its indexer weights");
  }
  scorer->model_ = std::move(*model);
  // Room for the longest window: every layer's latent row and index key per token.
  const ModelConfig& c = scorer->model_->config();
  const KvCacheSpec spec = scorer->model_->CacheSpec(kBlockSize);
  const int64_t blocks = (o.longest_window + kBlockSize - 1) / kBlockSize;
  const size_t bytes = static_cast<size_t>(blocks) * kBlockSize * c.num_layers *
                       (c.latent_cache_dim() + c.index_head_dim) * DTypeSize(spec.dtype);
  ASSIGN_OR_RETURN(scorer->cache_, PagedKvCache::Create(scorer->backend_.get(), spec, bytes));
  RETURN_IF_ERROR(scorer->cache_->Reserve(kWindowSequence, o.longest_window));
  scorer->longest_window_ = o.longest_window;
  return scorer;
}

double CalibrationNll::Loss(double retrieval_weight) const {
  const double text_mean = text.count > 0 ? text.sum / static_cast<double>(text.count) : 0.0;
  if (answers.count == 0) return text_mean;
  return text_mean + retrieval_weight * answers.sum / static_cast<double>(answers.count);
}

absl::StatusOr<WindowNll> PatternScorer::Run(const std::vector<int32_t>& window, ForwardBatch batch,
                                             std::vector<LayerInput>* layer_inputs, int32_t first_target) {
  const int32_t n = static_cast<int32_t>(window.size());
  if (n < 2 || n > longest_window_) {
    return absl::InvalidArgumentError(
        absl::StrFormat("a window of %d tokens: the scorer takes 2 to %d", window.size(), longest_window_));
  }
  if (first_target < 1 || first_target >= n) {
    return absl::InvalidArgumentError(
        absl::StrFormat("scoring from token %d of a %d-token window: nothing or the unpredicted first", first_target, n));
  }
  batch.token_ids = window;
  batch.sequences = {kWindowSequence};
  batch.token_seq.assign(n, 0);
  for (int32_t i = 0; i < n; ++i) batch.positions.push_back(i);
  // Only the rows that predict a counted token; the last token predicts nothing here.
  for (int32_t i = first_target - 1; i + 1 < n; ++i) batch.logit_rows.push_back(i);
  batch.capture_layer_inputs = layer_inputs != nullptr;
  ASSIGN_OR_RETURN(ForwardResult result, model_->Forward(batch, *cache_));
  const int32_t vocab = config().vocab_size;
  WindowNll nll;
  for (int32_t i = first_target - 1; i + 1 < n; ++i) {
    nll.sum += NextTokenNll(result.logits.data() + int64_t{i - (first_target - 1)} * vocab, vocab, window[i + 1]);
  }
  nll.count = n - first_target;
  if (layer_inputs != nullptr) *layer_inputs = std::move(result.layer_inputs);
  return nll;
}

absl::StatusOr<WindowNll> PatternScorer::Score(const std::vector<int32_t>& window,
                                               const std::vector<IndexerType>& pattern,
                                               std::vector<LayerInput>* layer_inputs, int32_t first_target) {
  ForwardBatch batch;
  batch.indexer_types = pattern;
  return Run(window, std::move(batch), layer_inputs, first_target);
}

absl::StatusOr<WindowNll> PatternScorer::ScoreFrom(const std::vector<int32_t>& window,
                                                   const std::vector<IndexerType>& pattern, int32_t first_layer,
                                                   const LayerInput& input, int32_t first_target) {
  ForwardBatch batch;
  batch.indexer_types = pattern;
  batch.first_layer = first_layer;
  batch.resume = &input;
  return Run(window, std::move(batch), nullptr, first_target);
}

absl::StatusOr<double> PatternScorer::MeanLoss(const CalibrationSet& set, const std::vector<IndexerType>& pattern) {
  CalibrationNll total;
  for (const std::vector<int32_t>& window : set.windows) {
    ASSIGN_OR_RETURN(WindowNll nll, Score(window, pattern));
    total.text += nll;
  }
  for (const RetrievalCase& c : set.retrieval) {
    ASSIGN_OR_RETURN(WindowNll nll, Score(c.tokens, pattern, nullptr, c.answer_begin));
    total.answers += nll;
  }
  if (total.text.count == 0) return absl::InvalidArgumentError("the calibration set is empty");
  return total.Loss(set.retrieval_weight);
}

}  // namespace indexcache
