#include "bench/agentic/agentic_trace.h"

#include "absl/strings/str_cat.h"
#include "bench/prompts.h"

namespace indexcache::bench {

int64_t LongestContext(const AgenticTraceSpec& spec) {
  return spec.first_turn_tokens + static_cast<int64_t>(spec.turns - 1) * (spec.max_new_tokens + spec.turn_tokens) +
         spec.max_new_tokens;
}

absl::Status ValidateTrace(const AgenticTraceSpec& spec, int64_t max_context) {
  if (spec.sessions < 1 || spec.turns < 1 || spec.first_turn_tokens < 1 || spec.turn_tokens < 1 ||
      spec.max_new_tokens < 1) {
    return absl::InvalidArgumentError(
        "--sessions, --turns, --first-turn-tokens, --turn-tokens and --max-new-tokens must be positive");
  }
  const int64_t longest = LongestContext(spec);
  if (longest > max_context) {
    return absl::InvalidArgumentError(
        absl::StrCat("the trace's last turn needs a context of ", longest,
                     " tokens (--first-turn-tokens + (--turns - 1) x "
                     "(--turn-tokens + --max-new-tokens) + --max-new-tokens) but the model holds ",
                     max_context, "; lower --turns, --turn-tokens or --first-turn-tokens"));
  }
  return absl::OkStatus();
}

std::vector<int32_t> NewTurnIds(const AgenticTraceSpec& spec, int session, int turn, int32_t vocab) {
  // One seed per (session, turn): distinct streams, the same in every run of the trace.
  const uint32_t seed = spec.seed * 1000003u + static_cast<uint32_t>(session) * 7919u + static_cast<uint32_t>(turn);
  return RandomPrompt(turn == 0 ? spec.first_turn_tokens : spec.turn_tokens, vocab, seed);
}

}  // namespace indexcache::bench
