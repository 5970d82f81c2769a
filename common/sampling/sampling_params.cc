#include "common/sampling/sampling_params.h"

#include <cmath>

#include "absl/strings/str_format.h"
#include "common/sampling/logprobs.h"

namespace indexcache {

absl::Status Validate(const SamplingParams& params, int32_t vocab_size) {
  // Written as negated accept-conditions so that NaN (for which every comparison is false) is
  // refused.
  if (!(params.temperature >= 0.0f) || !std::isfinite(params.temperature)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "temperature must be a finite value >= 0 (0 = greedy), got %g", params.temperature));
  }
  if (params.top_k < 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("top_k must be >= 0 (0 = off), got %d", params.top_k));
  }
  if (!(params.top_p > 0.0f && params.top_p <= 1.0f)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("top_p must be in (0, 1] (1 = off), got %g", params.top_p));
  }
  if (!(params.min_p >= 0.0f && params.min_p <= 1.0f)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("min_p must be in [0, 1] (0 = off), got %g", params.min_p));
  }
  if (params.max_new_tokens < 1) {
    return absl::InvalidArgumentError(
        absl::StrFormat("max_new_tokens must be >= 1, got %d", params.max_new_tokens));
  }
  for (size_t i = 0; i < params.stop_token_ids.size(); ++i) {
    const int32_t id = params.stop_token_ids[i];
    if (id < 0 || id >= vocab_size) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "stop_token_ids[%d] = %d is outside the vocabulary [0, %d)", i, id, vocab_size));
    }
  }
  for (size_t i = 0; i < params.stop_strings.size(); ++i) {
    if (params.stop_strings[i].empty()) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "stop_strings[%d] is empty; an empty stop string would match at once", i));
    }
  }
  if (params.top_logprobs < 0 || params.top_logprobs > kMaxTopLogprobs) {
    return absl::InvalidArgumentError(absl::StrFormat("top_logprobs must be in [0, %d], got %d", kMaxTopLogprobs,
                                                      params.top_logprobs));
  }
  if (params.top_logprobs > 0 && !params.logprobs) {
    return absl::InvalidArgumentError("top_logprobs needs logprobs: set logprobs to true as well");
  }
  return absl::OkStatus();
}

}  // namespace indexcache
