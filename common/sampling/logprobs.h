// Log-probabilities of generated tokens, as OpenAI's `logprobs` and vLLM's SamplingParams.logprobs
// report them: per token, its own log-probability and the `top_logprobs` most likely tokens of the
// same position.
//
// The distribution is the model's raw one: log_softmax(logits) of the LM head's output, before
// temperature, top-k, top-p and min-p (vLLM's default, logprobs_mode="raw_logprobs"). A token drawn
// from a filtered distribution still gets its unfiltered log-probability, and the alternatives are
// the model's, not the sampler's survivors: what a client comparing against a reference forward
// pass expects, and independent of the sampling settings.
//
// Computed on the host in double precision from one downloaded logits row (the engine downloads the
// rows of the requests that ask, nothing for the others: engine.h); NaN logits count as -inf, as in
// the sampler.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace indexcache {

// The most alternatives one token may carry (OpenAI's chat API allows 0–20).
inline constexpr int32_t kMaxTopLogprobs = 20;

struct TokenLogprob {
  int32_t token = -1;
  float logprob = 0.0f;
};

struct TokenLogprobs {
  TokenLogprob chosen;             // the generated token
  std::vector<TokenLogprob> top;   // most likely first, ties towards lower ids; at most top_n entries
};

// logits: one row [vocab]; `chosen` in [0, vocab); 0 <= top_n <= kMaxTopLogprobs. Refuses a row
// without a single usable (non-NaN, non -inf) logit.
[[nodiscard]] absl::StatusOr<TokenLogprobs> ComputeLogprobs(absl::Span<const float> logits, int32_t chosen,
                                                            int32_t top_n);

}  // namespace indexcache
