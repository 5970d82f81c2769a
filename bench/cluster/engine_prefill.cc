#include "bench/cluster/engine_prefill.h"

#include "absl/strings/str_cat.h"
#include "bench/first_token.h"
#include "bench/timing.h"

namespace indexcache::bench {

nlohmann::json MeasureEnginePrefill(const EngineOptions& options, const std::vector<PrefillCase>& cases) {
  nlohmann::json out = {{"cases", nlohmann::json::array()}};
  absl::StatusOr<std::unique_ptr<Engine>> engine = Engine::Create(options);
  if (!engine.ok()) {
    out["error"] = absl::StrCat("creating the engine: ", engine.status().ToString());
    return out;
  }
  out["kv_cache_blocks"] = (*engine)->cache().num_blocks();
  out["kv_cache_bytes_per_block"] = (*engine)->cache().bytes_per_block();
  uint32_t seed = 100;
  for (const PrefillCase& c : cases) {
    nlohmann::json r = {{"prompt_tokens", c.prompt_tokens}, {"warmups", c.warmups}};
    std::vector<double> seconds;
    for (int i = 0; i < c.warmups + c.reps; ++i) {
      absl::StatusOr<double> s = PrefillOnce(**engine, c.prompt_tokens, seed++);
      if (!s.ok()) {
        r["error"] = absl::StrCat(i < c.warmups ? "warm-up" : "repetition", " ", i, ": ", s.status().ToString());
        break;
      }
      if (i >= c.warmups) seconds.push_back(*s);
    }
    r["seconds"] = seconds;
    r["median_s"] = Summarize(seconds).median;
    out["cases"].push_back(r);
  }
  return out;
}

}  // namespace indexcache::bench
