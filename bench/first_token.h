// The engine's time to first token, in process: the prefill every engine benchmark times.
#pragma once

#include <cstdint>

#include "absl/status/statusor.h"
#include "common/engine/engine.h"

namespace indexcache::bench {

// temperature 0, ignore_eos.
SamplingParams Greedy(int32_t max_new_tokens);

// Steps `engine` until request `id` has its first token; an error event of the request fails.
absl::Status StepToFirstToken(Engine& engine, RequestId id);

// Submits RandomPrompt(tokens, vocab, seed) alone (max_new_tokens 1) and steps until its first
// token: chunked at the engine's max_batch_tokens, logits for the last position only. Returns the
// seconds from Submit to the Step that sampled it; fails if the engine still has work afterwards.
absl::StatusOr<double> PrefillOnce(Engine& engine, int32_t tokens, uint32_t seed);

}  // namespace indexcache::bench
