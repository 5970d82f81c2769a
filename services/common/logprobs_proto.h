// Between the wire (indexcache.v1.TokenLogprobs) and the engine (TokenLogprobs, logprobs.h): a
// generated token's logprobs as the decode worker streams them and the handoff trailer carries the
// first token's.
#pragma once

#include "absl/status/statusor.h"
#include "common/sampling/logprobs.h"
#include "indexcache/v1/generate.pb.h"

namespace indexcache {

void LogprobsToProto(const TokenLogprobs& logprobs, v1::TokenLogprobs& proto);
// Refuses what a worker could not have computed: a token outside [0, vocab_size), more than
// kMaxTopLogprobs alternatives, a NaN or positive log-probability.
absl::StatusOr<TokenLogprobs> LogprobsFromProto(const v1::TokenLogprobs& proto, int32_t vocab_size);

}  // namespace indexcache
