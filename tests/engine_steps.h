// Stepping an Engine in tests and GPU checks: greedy parameters, a prefill-only request to its
// kPrefillDone, and a decoding request to its end. Failures are GoogleTest failures.
#pragma once

#include <cstdint>
#include <vector>

#include "common/engine/engine.h"
#include "gtest/gtest.h"

namespace indexcache::engine_steps {

// Greedy decoding of `max_new_tokens` tokens, end-of-sequence ids ignored: a request's exact length.
inline SamplingParams GreedyParams(int32_t max_new_tokens) {
  SamplingParams p;
  p.temperature = 0.0f;
  p.max_new_tokens = max_new_tokens;
  p.ignore_eos = true;
  return p;
}

// A prefill-only request stepped to its kPrefillDone: how many steps ran a pass, and the first token
// it sampled (-1 each when it failed).
struct PrefillRun {
  int steps = -1;
  int32_t first_token = -1;
};

inline PrefillRun RunPrefill(Engine& engine, RequestId id) {
  for (int steps = 1; steps < 100; ++steps) {
    absl::StatusOr<std::vector<TokenEvent>> events = engine.Step();
    EXPECT_TRUE(events.ok()) << events.status();
    if (!events.ok()) return {};
    for (const TokenEvent& e : *events) {
      if (e.request == id && e.finish == RequestFinish::kPrefillDone) return {.steps = steps, .first_token = e.token};
      EXPECT_EQ(e.finish, RequestFinish::kNone) << RequestFinishName(e.finish);
    }
  }
  ADD_FAILURE() << "prefill did not finish";
  return {};
}

// Steps while the engine has work; the tokens request `id` produced meanwhile.
inline std::vector<int32_t> DecodeToEnd(Engine& engine, RequestId id) {
  std::vector<int32_t> tokens;
  while (engine.HasWork()) {
    absl::StatusOr<std::vector<TokenEvent>> events = engine.Step();
    EXPECT_TRUE(events.ok()) << events.status();
    if (!events.ok()) break;
    for (const TokenEvent& e : *events) {
      if (e.request == id && e.token >= 0) tokens.push_back(e.token);
    }
  }
  return tokens;
}

}  // namespace indexcache::engine_steps
