// Prefill and decode through the public Engine API, the way a server drives it: Submit + Step.
//   prefill: one prompt of T random token ids, timed from Submit to the step that samples its first
//            token (chunked at max_batch_tokens; logits for the last position only).
//   decode:  B prompts of C tokens are prefilled (untimed), then every Step decodes one token for
//            each of the B sequences; steps are timed one by one. Batch sizes run largest first on
//            the same sequences (the extra ones are aborted), so each context is prefilled once.
// Each result carries the analytic cost (forward_cost.h) and the share of time spent in the indexer
// (DsaModel::TakeStats) and in the backend's attention and MoE regions.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "bench/forward_cost.h"
#include "bench/timing.h"

namespace indexcache::bench {

struct PatternSpec {
  std::string name;           // "all-Full", "freq-4"
  std::string index_pattern;  // EngineOptions::index_pattern ("" = use index_freq)
  int32_t index_freq = 0;     // EngineOptions::index_freq
};

struct EngineBenchOptions {
  std::string model_dir;
  int threads = 0;
  int32_t max_batch_tokens = 512;
  std::vector<int32_t> prefill_lengths;
  int prefill_reps = 3;  // x3 for prompts of one chunk
  std::vector<int32_t> decode_contexts;
  std::vector<int32_t> decode_batches;
  int decode_warmup_steps = 4;
  int decode_steps = 24;
};

// Fractions of a repetition's wall time spent in the engine's timed regions.
struct RegionShares {
  double indexer = 0.0;    // indexer seconds / wall seconds
  double attention = 0.0;  // sparse MLA incl. the absorbed head projections
  double moe = 0.0;        // routing + routed experts (not the shared expert)
};

struct PrefillResult {
  int32_t prompt_len = 0;
  Sample seconds;             // per prefill (time to first token)
  double tokens_per_s = 0.0;  // prompt_len / median
  ForwardCost cost;
  double gflops = 0.0;                // cost.flops() / median
  RegionShares shares;                // median over the timed repetitions
  double engine_indexer_flops = 0.0;  // the engine's own count (IndexCacheStats), per prefill
};

struct DecodeResult {
  int32_t batch = 0;
  int32_t context = 0;         // prompt length the sequences were prefilled with
  double mean_position = 0.0;  // mean position of the decoded tokens over the timed steps
  Sample step_seconds;         // per step (one token for each of `batch` sequences)
  double tokens_per_s = 0.0;   // batch / median step
  ForwardCost cost;            // per step, averaged over the timed steps
  double gflops = 0.0;
  RegionShares shares;  // median over the timed steps
};

struct PatternResults {
  PatternSpec spec;
  std::string layers;  // resolved pattern, "FFSSSFSS"
  std::vector<PrefillResult> prefill;
  std::vector<DecodeResult> decode;
};

// Loads one engine per pattern and measures them case by case, alternating between the patterns
// within every case (repetition by repetition, step by step), so a change in the load of a shared
// machine hits all patterns alike. Results come back in the order of `specs`.
absl::StatusOr<std::vector<PatternResults>> RunPatterns(const EngineBenchOptions& options,
                                                        const std::vector<PatternSpec>& specs);

}  // namespace indexcache::bench
