// Draws the next token of one sequence: the pipeline's one definition (SamplingPipeline), and the
// per-request state that feeds it (Sampler: parameters and RNG).
//
// Pipeline, in Hugging Face transformers' order (GenerationMixin._get_logits_processor:
// temperature, top-k, top-p, min-p, each seeing the renormalised output of the one before):
//   temperature == 0 -> argmax (lowest id on ties), no randomness;
//   otherwise p = softmax(logits / temperature)  (max-subtracted, summed in double)
//     -> top-k: keep the k largest (ties broken towards lower ids)
//     -> top-p: keep the smallest most-likely-first prefix whose mass >= top_p (at least one token)
//     -> min-p: drop tokens with p < min_p * max p
//     -> renormalise, draw by inverse CDF.
// vLLM's V1 sampler applies min-p before top-k/top-p; the two orders differ only when top-p and
// min-p are both on (p = {.5,.3,.2}, top_p = .6, min_p = .5: HF keeps {.5,.3}, vLLM only {.5}).
//
// Non-finite logits: NaN counts as -inf (never drawn); a row with nothing but NaN/-inf is refused.
// +inf is the limit of a huge logit: the +inf tokens share all the mass equally.
//
// Reproducibility: a given seed gives the same tokens on every run and machine. The RNG is
// std::mt19937_64 (its output sequence is fixed by the C++ standard), uniforms are built from its
// raw 64 bits (std::uniform_real_distribution differs between standard libraries), and every sum
// and every candidate order is canonical (by logit, then id), never the unspecified order that
// nth_element leaves. Only last-ulp differences between libm exp() implementations remain.
//
// Randomness stays on the host: a Sampler makes one draw per sampled token (NextDraw) and the
// pipeline is a pure function of (logits, draw). The engine uploads the draws and a backend op
// (Backend::SampleTokens) runs the pipeline where the logits are: the CPU backend through
// SamplingPipeline, CUDA through cuda_sampling.cu, which implements this definition (same orders,
// same exp argument) and can differ only where u falls within float rounding of a CDF or filter
// boundary (tools/gpu/cuda_sampling_check.cc detects those).
//
// Cost for a V-token row: O(V) passes; top-k finds its threshold with a k-heap (or nth_element for
// large k); top-p sorts only the tokens within a factor of two of its cut, never the whole row.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/sampling/sampling_draw.h"
#include "common/sampling/sampling_params.h"

namespace indexcache {

// The pipeline as a pure function of its inputs, with the scratch it reuses so that a decode step
// allocates nothing once warm. Parameters are taken as given (Sampler::Create validated them).
class SamplingPipeline {
 public:
  // logits: one row. Returns the drawn token id; refuses a row without a single usable (non-NaN,
  // non -inf) logit.
  [[nodiscard]] absl::StatusOr<int32_t> Run(absl::Span<const float> logits, const SamplingDraw& draw);

  // u = bits · 2^-53, the uniform a draw's uniform_bits stands for.
  static double Uniform(uint64_t bits) { return static_cast<double>(bits) * 0x1.0p-53; }

 private:
  struct Candidate {
    int32_t id;
    float logit;
    double weight;  // exp((logit - max) / temperature): the max has weight 1
  };

  // Up to this top_k a heap scan finds the k-th logit; above it, nth_element (the heap's log k
  // insertions would lose on rows where many logits enter it).
  static constexpr int32_t kHeapTopKLimit = 1024;

  // Fills candidates_ (in id order) with the usable tokens that survive top-k.
  void CollectTopK(absl::Span<const float> logits, int32_t num_usable, int32_t top_k);
  // The k-th largest usable logit (1 <= k < number of usable logits).
  float KthLargest(absl::Span<const float> logits, int32_t k);
  // Cuts candidates_ to the top-p prefix, also stopping where min-p starts dropping.
  void ApplyTopPAndMinP(double total_weight, float top_p, float min_p);

  std::vector<Candidate> candidates_;
  std::vector<float> kth_scratch_;  // KthLargest's heap or selection buffer
};

class Sampler {
 public:
  // Validates `params` against `vocab_size` (the length of every logits row). The RNG is seeded
  // from params.seed, or from `fallback_seed` when the request gave none (see RandomSeed()).
  [[nodiscard]] static absl::StatusOr<Sampler> Create(const SamplingParams& params,
                                                      int32_t vocab_size, uint64_t fallback_seed);

  // A non-deterministic seed (std::random_device) for requests without one.
  static uint64_t RandomSeed();

  // The next token's pipeline input: the parameters and, unless greedy, one RNG output (the only
  // randomness a token consumes). A greedy draw consumes nothing.
  SamplingDraw NextDraw();
  // Consumes the RNG output of `draws` sampled tokens without drawing them (a greedy sampler consumes
  // nothing): a migrated request's sampler continues where the earlier attempt's left off.
  void SkipDraws(int64_t draws);

  // logits: [vocab_size] for the position being generated. NextDraw, then the pipeline on the host.
  // Refuses a row of the wrong length or one without a single usable (non-NaN, non -inf) logit.
  [[nodiscard]] absl::StatusOr<int32_t> Sample(absl::Span<const float> logits);

  // The seed actually used, to log so that a run can be replayed.
  uint64_t seed() const { return seed_; }

 private:
  Sampler(const SamplingParams& params, int32_t vocab_size, uint64_t seed);

  SamplingDraw params_;  // uniform_bits unused
  int32_t vocab_size_;
  uint64_t seed_;
  std::mt19937_64 rng_;
  SamplingPipeline pipeline_;
};

}  // namespace indexcache
