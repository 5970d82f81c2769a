#include "services/common/logprobs_proto.h"


#include "absl/strings/str_format.h"

namespace indexcache {
namespace {

absl::StatusOr<TokenLogprob> FromProto(int32_t token, float logprob, int32_t vocab_size) {
  if (token < 0 || token >= vocab_size) {
    return absl::InvalidArgumentError(
        absl::StrFormat("logprobs name token %d, outside the vocabulary [0, %d)", token, vocab_size));
  }
  // A log-probability is <= 0 (a float rounding of log 1 included); -inf is a possible value.
  if (!(logprob <= 0.0f)) {
    return absl::InvalidArgumentError(absl::StrFormat("token %d's logprob %g is not a log-probability", token, logprob));
  }
  return TokenLogprob{token, logprob};
}

}  // namespace

void LogprobsToProto(const TokenLogprobs& logprobs, v1::TokenLogprobs& proto) {
  proto.set_token_id(logprobs.chosen.token);
  proto.set_logprob(logprobs.chosen.logprob);
  for (const TokenLogprob& top : logprobs.top) {
    v1::Logprob* entry = proto.add_top_logprobs();
    entry->set_token_id(top.token);
    entry->set_logprob(top.logprob);
  }
}

absl::StatusOr<TokenLogprobs> LogprobsFromProto(const v1::TokenLogprobs& proto, int32_t vocab_size) {
  if (proto.top_logprobs_size() > kMaxTopLogprobs) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%d top logprobs; at most %d exist", proto.top_logprobs_size(), kMaxTopLogprobs));
  }
  TokenLogprobs logprobs;
  absl::StatusOr<TokenLogprob> chosen = FromProto(proto.token_id(), proto.logprob(), vocab_size);
  if (!chosen.ok()) return chosen.status();
  logprobs.chosen = *chosen;
  for (const v1::Logprob& top : proto.top_logprobs()) {
    absl::StatusOr<TokenLogprob> entry = FromProto(top.token_id(), top.logprob(), vocab_size);
    if (!entry.ok()) return entry.status();
    logprobs.top.push_back(*entry);
  }
  return logprobs;
}

}  // namespace indexcache
