// Replays an agentic trace (agentic_trace.h) against a cluster: up to `concurrency` sessions in flight,
// each session's turns strictly in order (turn t + 1 is sent once turn t's stream has ended, with the
// tokens it generated appended). A failed turn ends its session: the next turn's prompt would need the
// tokens it did not generate. It is recorded with its error, and the session's remaining turns are
// counted as not sent — never dropped silently.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "bench/agentic/agentic_trace.h"
#include "indexcache/client.h"

namespace indexcache::bench {

// One turn as the client saw it.
struct TurnRecord {
  int session = 0;
  int turn = 0;
  absl::Status status;         // OK when the stream ended with finish reason "length"
  double ttft_seconds = 0;     // until the first chunk that carried tokens
  int64_t prompt_tokens = 0;   // sent
  std::string prefill_worker;  // from FinalInfo; empty when the turn failed without one
  std::string decode_worker;
};

struct ReplayResult {
  std::vector<TurnRecord> turns;  // every turn sent, by session, then turn
  int64_t turns_not_sent = 0;     // the turns after a session's failed one
  double wall_seconds = 0;
};

// `label` prefixes the progress lines (one per finished session, on stderr).
ReplayResult ReplayTrace(const client::Client& client, const AgenticTraceSpec& spec, int concurrency, int32_t vocab,
                         const std::string& label);

}  // namespace indexcache::bench
