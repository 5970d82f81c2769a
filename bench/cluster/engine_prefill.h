// The engine's in-process prefill, the baseline the cluster's time to first token is read against:
// one Engine (the same flags a worker gets), each prompt submitted alone and timed from Submit until
// the Step that returns its first token (PrefillOnce, first_token.h) — what `indexcache generate
// --json` reports as time_to_first_token_s, but warmed up and repeated in one process. Beside it, the
// same prefill with its export on (SubmitPrefill with a sink, as a prefill worker runs it, whose
// segments a consumer thread waits for and drops): export on / off without a peer process.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/engine/engine.h"
#include "nlohmann/json.hpp"

namespace indexcache::bench {

struct PrefillCase {
  int32_t prompt_tokens = 0;
  int reps = 3;
  int warmups = 1;
};

// Runs every case on one engine, each repetition on fresh random ids
// (seeds 100, 101, …); a case that fails records its error and the next one still runs.
// Repetitions alternate export off and on. JSON: {"cases": [{"prompt_tokens", "warmups", "seconds": [...],
// "median_s", "export_seconds": [...], "export_median_s", "error"?}], "kv_cache_blocks", ...}.
nlohmann::json MeasureEnginePrefill(const EngineOptions& options, const std::vector<PrefillCase>& cases);

}  // namespace indexcache::bench
