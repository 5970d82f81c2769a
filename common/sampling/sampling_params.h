// Per-request generation settings: how the next token is drawn (temperature, top-k, top-p, min-p,
// seed) and when generation ends (token budget, stop tokens, stop strings). Backend-neutral plain
// data: Sampler reads it and hands each token's draw to the backend as a SamplingDraw.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace indexcache {

struct SamplingParams {
  // Logits are divided by it before the softmax; 0 means greedy (argmax, lowest id on ties).
  float temperature = 1.0f;
  // Keep only the top_k most likely tokens; 0 turns the filter off.
  int32_t top_k = 0;
  // Nucleus: keep the smallest set of most likely tokens whose mass is >= top_p; 1 turns it off.
  float top_p = 1.0f;
  // Drop tokens whose probability is < min_p x the largest probability; 0 turns it off.
  float min_p = 0.0f;
  // Reproducible draws; unset means the engine supplies a fresh seed.
  std::optional<uint64_t> seed;
  // Generated tokens (the prompt excluded) after which generation ends with FinishReason::kLength.
  int32_t max_new_tokens = 128;
  // Tokens that end generation (their text is not emitted), in addition to the model's EOS ids.
  std::vector<int32_t> stop_token_ids;
  // Strings that end generation; the emitted text stops just before the first one that appears.
  std::vector<std::string> stop_strings;
  // Keep generating past the model's EOS ids (stop_token_ids still apply).
  bool ignore_eos = false;
  // Report each generated token's log-probability and its `top_logprobs` most likely alternatives
  // (0–kMaxTopLogprobs; only with `logprobs`): raw, before temperature and the filters (logprobs.h).
  bool logprobs = false;
  int32_t top_logprobs = 0;
  // A migrated request (the router re-dispatches a stream whose decode worker died): the last
  // `resumed_tokens` prompt ids are what earlier attempts generated. The engine continues as if it had
  // generated them itself: they are detokenized and fed to the stop conditions (a stop string may
  // span the splice), the sampler skips the draws they consumed, and max_new_tokens counts only the
  // tokens still to come. 0: a fresh request.
  int32_t resumed_tokens = 0;
};

// Refuses values no sampler can honour, naming the field: temperature < 0 or non-finite, top_k < 0,
// top_p outside (0, 1], min_p outside [0, 1], max_new_tokens < 1, a stop token id outside
// [0, vocab_size), an empty stop string, top_logprobs outside [0, kMaxTopLogprobs] or set without
// logprobs. Called at the front door, before a request is queued.
[[nodiscard]] absl::Status Validate(const SamplingParams& params, int32_t vocab_size);

}  // namespace indexcache
