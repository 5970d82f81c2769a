#include "bench/first_token.h"

#include "bench/prompts.h"
#include "bench/timing.h"
#include "common/util/status_macros.h"

namespace indexcache::bench {

SamplingParams Greedy(int32_t max_new_tokens) {
  SamplingParams p;
  p.temperature = 0.0f;
  p.max_new_tokens = max_new_tokens;
  p.ignore_eos = true;
  return p;
}

absl::Status StepToFirstToken(Engine& engine, RequestId id) {
  for (;;) {
    ASSIGN_OR_RETURN(std::vector<TokenEvent> events, engine.Step());
    bool done = false;
    for (const TokenEvent& e : events) {
      if (e.request != id) continue;
      if (e.finish == RequestFinish::kError) return e.error;
      done = done || e.token >= 0;
    }
    if (done) return absl::OkStatus();
  }
}

absl::StatusOr<double> PrefillOnce(Engine& engine, int32_t tokens, uint32_t seed) {
  ASSIGN_OR_RETURN(RequestId id, engine.Submit(RandomPrompt(tokens, engine.config().vocab_size, seed), Greedy(1)));
  const double start = NowSeconds();
  RETURN_IF_ERROR(StepToFirstToken(engine, id));
  const double seconds = NowSeconds() - start;
  if (engine.HasWork()) return absl::InternalError("prefill: the request is still queued after its first token");
  return seconds;
}

}  // namespace indexcache::bench
