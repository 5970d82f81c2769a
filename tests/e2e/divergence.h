// Where a stream's tokens first differ from the truth's, and whether that token was a near-tie: a
// choice that float rounding may settle either way, so that two correct runs can part there.
//
// The cluster's decode batches differ from run to run (which streams share a step, a migrated stream
// re-prefilled), and on the CPU backend a batch's GEMMs sum in an order that depends on its shape: the
// same position's logits differ between runs in the last bits. Where the choice of token hangs on
// that, the runs may part, and everything after follows a different path. The judge is an independent
// pass of the in-process engine over the prompt and the truth's tokens before the divergence
// (Engine::ScoreChunks): from its logits at that position,
//   greedy: a tie when the two tokens are the two largest logits and lie within kLogitTolerance;
//   sampled (temperature only): the draw's point u·W on the cumulative weights in id order (the
//     pipeline's inverse CDF, sampler.h) lies within 2·kLogitTolerance/temperature of the total mass of
//     the boundary between the two tokens — a perturbation of every logit by at most kLogitTolerance
//     moves a boundary by at most that share — and the two tokens are those on either side of it.
// Anything else is a real difference, and the caller fails on it.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_format.h"
#include "common/engine/engine.h"
#include "common/sampling/sampler.h"

namespace indexcache::e2e {

// The largest logit difference that float rounding between two batch shapes is taken to explain. The
// CPU backend computes in f32: logits of this model are O(10), and reordered sums of a few hundred
// terms differ by O(1e-5); 1e-3 is a hundred times that, and still a thousandth of a typical gap
// between a step's two best tokens.
inline constexpr double kLogitTolerance = 1e-3;

struct Divergence {
  int64_t position = -1;  // the first generated index that differs; -1: identical
  bool tie = false;
  int32_t judged_choice = -1;  // the token the judge's own pass chooses there (greedy or the same draw)
  std::string detail;  // the two tokens and the margin that judged them
};

// The next-token logits after `ids` from one chunked pass of the in-process engine.
inline absl::StatusOr<std::vector<float>> LastLogits(Engine& engine, const std::vector<int32_t>& ids) {
  std::vector<float> last;
  const int32_t wanted = static_cast<int32_t>(ids.size()) - 1;
  const int64_t vocab = engine.config().vocab_size;
  // Every chunk's result holds the logits of all its positions (ScoreChunks).
  absl::Status status = engine.ScoreChunks(ids, false, [&](int32_t begin, const ForwardResult& r) {
    const int64_t rows = static_cast<int64_t>(r.logits.size()) / vocab;
    if (wanted >= begin && wanted < begin + rows) {
      const auto row = r.logits.begin() + (wanted - begin) * vocab;
      last.assign(row, row + vocab);
    }
    return absl::OkStatus();
  });
  if (!status.ok()) return status;
  if (last.empty()) return absl::InternalError("the scoring pass returned no logits for the last position");
  return last;
}

// Judges the first difference between `observed` and `truth`, continuations of `prompt` under `params`
// (temperature 0, or temperature alone with a seed: the filters are not modelled here).
inline absl::StatusOr<Divergence> JudgeDivergence(Engine& engine, const std::vector<int32_t>& prompt,
                                                  const SamplingParams& params, const std::vector<int32_t>& truth,
                                                  const std::vector<int32_t>& observed) {
  Divergence d;
  size_t k = 0;
  while (k < truth.size() && k < observed.size() && truth[k] == observed[k]) ++k;
  if (k == truth.size() && k == observed.size()) return d;
  d.position = static_cast<int64_t>(k);
  if (k == truth.size() || k == observed.size()) {
    d.detail = absl::StrFormat("one run ended at token %d: %d tokens against %d", k, observed.size(), truth.size());
    return d;
  }
  if (params.top_k != 0 || params.top_p != 1.0f || params.min_p != 0.0f) {
    return absl::InvalidArgumentError("JudgeDivergence models temperature alone, not top-k/top-p/min-p");
  }
  std::vector<int32_t> ids = prompt;
  ids.insert(ids.end(), truth.begin(), truth.begin() + static_cast<std::ptrdiff_t>(k));
  absl::StatusOr<std::vector<float>> logits = LastLogits(engine, ids);
  if (!logits.ok()) return logits.status();
  const int32_t a = truth[k];
  const int32_t b = observed[k];
  const std::vector<float>& l = *logits;

  if (params.temperature == 0.0f) {
    // The two largest logits.
    int32_t first = -1, second = -1;
    for (int32_t i = 0; i < static_cast<int32_t>(l.size()); ++i) {
      if (first < 0 || l[i] > l[first]) {
        second = first;
        first = i;
      } else if (second < 0 || l[i] > l[second]) {
        second = i;
      }
    }
    const double gap = std::abs(static_cast<double>(l[a]) - l[b]);
    const bool top_two = (a == first && b == second) || (a == second && b == first);
    d.tie = top_two && gap <= kLogitTolerance;
    d.judged_choice = first;
    d.detail = absl::StrFormat("greedy: token %d (logit %.6f) against %d (logit %.6f), gap %.2e; top two %d, %d", a,
                               l[a], b, l[b], gap, first, second);
    return d;
  }

  // The pipeline's inverse CDF: weights exp((l - max) / T) in id order, u·W against the running sums.
  auto sampler = Sampler::Create(params, static_cast<int32_t>(l.size()), 0);
  if (!sampler.ok()) return sampler.status();
  sampler->SkipDraws(static_cast<int64_t>(k));
  const double u = SamplingPipeline::Uniform(sampler->NextDraw().uniform_bits);
  float max_logit = -std::numeric_limits<float>::infinity();
  for (const float x : l) max_logit = std::max(max_logit, x);
  std::vector<double> weight(l.size());
  double total = 0.0;
  for (size_t i = 0; i < l.size(); ++i) {
    weight[i] = std::exp(static_cast<float>((static_cast<double>(l[i]) - max_logit) / params.temperature));
    total += weight[i];
  }
  const double point = u * total;
  double below = 0.0;  // the running sum before the drawn token
  size_t drawn = 0;
  while (drawn + 1 < l.size() && point >= below + weight[drawn]) below += weight[drawn++];
  // The nearest boundary, and the tokens on either side of it (skipping zero weights).
  const double to_lower = point - below;
  const double to_upper = below + weight[drawn] - point;
  int32_t neighbour = -1;
  if (to_lower <= to_upper) {
    for (int64_t i = static_cast<int64_t>(drawn) - 1; i >= 0 && neighbour < 0; --i) {
      if (weight[i] > 0) neighbour = static_cast<int32_t>(i);
    }
  } else {
    for (size_t i = drawn + 1; i < l.size() && neighbour < 0; ++i) {
      if (weight[i] > 0) neighbour = static_cast<int32_t>(i);
    }
  }
  const double margin = std::min(to_lower, to_upper) / total;
  const double bound = 2.0 * kLogitTolerance / params.temperature;
  const int32_t drawn_id = static_cast<int32_t>(drawn);
  const bool across = (a == drawn_id && b == neighbour) || (a == neighbour && b == drawn_id);
  d.tie = across && margin <= bound;
  d.judged_choice = drawn_id;
  d.detail = absl::StrFormat(
      "sampled (draw %d, u = %.9f): token %d against %d; the engine's pass draws %d, nearest boundary to %d at %.2e "
      "of the mass (a tie within %.2e)",
      k, u, a, b, drawn_id, neighbour, margin, bound);
  return d;
}

}  // namespace indexcache::e2e
