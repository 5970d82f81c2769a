// The synthetic agentic trace the agentic benchmark replays: `sessions` conversations of `turns` turns.
// A session opens with `first_turn_tokens` random ids (a system prompt, tools, a task); each later
// turn's prompt is the previous turn's prompt, the tokens the model generated for it, and `turn_tokens`
// new random ids (a tool result, the user's next message) — a context that only grows at its end, the
// case a prefix cache and prefix-aware routing are for. The new ids are seeded by (seed, session, turn),
// so two runs of one trace send the same ones; greedy decoding makes the generated ones the same too.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"

namespace indexcache::bench {

struct AgenticTraceSpec {
  int sessions = 16;
  int turns = 8;
  int first_turn_tokens = 1024;
  int turn_tokens = 256;
  int max_new_tokens = 16;
  uint32_t seed = 1;
};

// The prompt of the trace's last turn plus the tokens generated for it: what the model's context must hold.
int64_t LongestContext(const AgenticTraceSpec& spec);

// Every size positive, and the longest context within `max_context` (the model's
// max_position_embeddings), or an error that names the flags to lower.
absl::Status ValidateTrace(const AgenticTraceSpec& spec, int64_t max_context);

// The ids a session appends before turn `turn` (turn 0: its whole first prompt), below vocab - 2 as
// bench/prompts.h draws them.
std::vector<int32_t> NewTurnIds(const AgenticTraceSpec& spec, int session, int turn, int32_t vocab);

}  // namespace indexcache::bench
