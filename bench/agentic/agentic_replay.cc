#include "bench/agentic/agentic_replay.h"

#include <algorithm>
#include <atomic>
#include <iostream>
#include <mutex>
#include <thread>

#include "absl/strings/str_format.h"
#include "bench/serving/timed_stream.h"
#include "bench/timing.h"

namespace indexcache::bench {
namespace {

struct SessionOutcome {
  std::vector<TurnRecord> turns;
  int64_t turns_not_sent = 0;
  int64_t final_context = 0;  // prompt tokens of its last turn sent
};

SessionOutcome RunSession(const client::Client& client, const AgenticTraceSpec& spec, int session, int32_t vocab) {
  SessionOutcome out;
  std::vector<int32_t> context = NewTurnIds(spec, session, 0, vocab);
  for (int turn = 0; turn < spec.turns; ++turn) {
    TimedStream t = TimeStream(client, GreedyRequest(context, spec.max_new_tokens));
    TurnRecord& r = out.turns.emplace_back();
    r.session = session;
    r.turn = turn;
    r.status = t.status;
    r.ttft_seconds = t.ttft;
    r.prompt_tokens = static_cast<int64_t>(context.size());
    if (t.final) {
      r.prefill_worker = t.final->prefill_worker;
      r.decode_worker = t.final->decode_worker;
    }
    out.final_context = r.prompt_tokens;
    if (!t.status.ok()) {
      out.turns_not_sent = spec.turns - turn - 1;
      break;
    }
    if (turn + 1 < spec.turns) {
      context.insert(context.end(), t.token_ids.begin(), t.token_ids.end());
      const std::vector<int32_t> next = NewTurnIds(spec, session, turn + 1, vocab);
      context.insert(context.end(), next.begin(), next.end());
    }
  }
  return out;
}

}  // namespace

ReplayResult ReplayTrace(const client::Client& client, const AgenticTraceSpec& spec, int concurrency, int32_t vocab,
                         const std::string& label) {
  std::vector<SessionOutcome> outcomes(static_cast<size_t>(spec.sessions));
  std::atomic<int> next_session{0};
  std::mutex progress_mu;
  int sessions_done = 0;
  const double start = NowSeconds();
  std::vector<std::thread> threads;
  for (int i = 0; i < std::min(concurrency, spec.sessions); ++i) {
    threads.emplace_back([&] {
      for (int s; (s = next_session.fetch_add(1)) < spec.sessions;) {
        SessionOutcome outcome = RunSession(client, spec, s, vocab);
        const int64_t ok = std::count_if(outcome.turns.begin(), outcome.turns.end(),
                                         [](const TurnRecord& r) { return r.status.ok(); });
        std::lock_guard<std::mutex> lock(progress_mu);
        std::cerr << absl::StrFormat(
            "[%s] session %d done (%d/%d sessions, %.0f s): %d/%d turns ok, last prompt %d tokens, last TTFT %.3f "
            "s%s\n",
            label, s, ++sessions_done, spec.sessions, NowSeconds() - start, ok, spec.turns, outcome.final_context,
            outcome.turns.back().ttft_seconds,
            outcome.turns.back().status.ok() ? "" : "; failed: " + outcome.turns.back().status.ToString());
        outcomes[static_cast<size_t>(s)] = std::move(outcome);
      }
    });
  }
  for (std::thread& t : threads) t.join();
  ReplayResult result;
  result.wall_seconds = NowSeconds() - start;
  for (SessionOutcome& o : outcomes) {
    result.turns.insert(result.turns.end(), o.turns.begin(), o.turns.end());
    result.turns_not_sent += o.turns_not_sent;
  }
  return result;
}

}  // namespace indexcache::bench
