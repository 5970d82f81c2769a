// The paper's long-context measurement on --device cuda, for one IndexCache pattern: at each context
// length, the prefill time (prompt → first token, in chunks) with the indexer's share of it, then decode
// tokens/s at batch 1 and at the largest batch the KV cache holds. Prints JSON on stdout;
// bench/cuda/run_paper_shape.sh runs it all-Full and with 1/4 of the indexers kept.
//   cuda_long_context_bench --model DIR [--index-freq F] [--contexts 32768,65536,131072,200000]
//                           [--chunk 8192] [--kv-cache-gb 48] [--decode-steps 8] [--max-batch 64] [--device cuda]
//
// The decode batch is built the way a decode worker builds it: the prompt is prefilled once, its rows
// are exported (ExportSegment, as a prefill worker ships them) and imported into every sequence of the
// batch (AdmitImport/ImportRows/StartDecode). Prefilling each of a large batch's sequences separately
// would cost minutes of GPU time per length and measure nothing the single prefill does not.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "bench/cuda/engine_bench_util.h"
#include "common/engine/engine.h"
#include "nlohmann/json.hpp"

namespace indexcache::bench {
namespace {

using Clock = std::chrono::steady_clock;

void Die(const std::string& what) {
  std::fprintf(stderr, "cuda_long_context_bench: %s\n", what.c_str());
  std::exit(1);
}

template <typename T>
T OrDie(absl::StatusOr<T> value) {
  if (!value.ok()) Die(value.status().ToString());
  return *std::move(value);
}

void OrDie(const absl::Status& status) {
  if (!status.ok()) Die(status.ToString());
}

// One step; dies on an engine error or a request that ended in error.
std::vector<TokenEvent> StepOrDie(Engine& engine) {
  std::vector<TokenEvent> events = OrDie(engine.Step());
  for (const TokenEvent& e : events) {
    if (e.finish == RequestFinish::kError) Die(e.error.ToString());
  }
  return events;
}

struct Prefilled {
  double ms = 0;
  IndexCacheStats stats;
  int32_t first_token = -1;
  // The prompt's rows per (layer, kind), in the order they are imported.
  struct Rows {
    int32_t layer;
    KvRowKind kind;
    std::shared_ptr<std::string> data;  // [length, width] in the cache's dtype; each import holds it
  };
  std::vector<Rows> rows;
};

// Prefills `prompt` as a prefill worker does, times it, and exports its cache rows.
Prefilled PrefillAndExport(Engine& engine, const std::vector<int32_t>& prompt, const SamplingParams& params) {
  Prefilled out;
  engine.TakeStats();
  const auto start = Clock::now();
  const RequestId id = OrDie(engine.SubmitPrefill(prompt, params));
  while (out.first_token < 0) {
    for (const TokenEvent& e : StepOrDie(engine)) {
      if (e.request == id && e.finish == RequestFinish::kPrefillDone) out.first_token = e.token;
      if (e.request == id && e.finish != RequestFinish::kNone && e.finish != RequestFinish::kPrefillDone) {
        Die(std::string("prefill ended with ") + RequestFinishName(e.finish));
      }
    }
  }
  out.ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
  out.stats = engine.TakeStats();
  KvSegment segment = OrDie(engine.ExportSegment(id, 0, static_cast<int32_t>(prompt.size())));
  OrDie(segment.Wait());
  for (const KvSlice& slice : segment.slices()) {
    out.rows.push_back({slice.layer, slice.kind, std::make_shared<std::string>(segment.bytes(slice))});
  }
  engine.Release(id);
  return out;
}

// Imports the prefilled prompt into up to `max_batch` sequences (fewer when the cache fills first),
// decodes them together and returns {batch, median ms per step}.
std::pair<int32_t, double> DecodeBatch(Engine& engine, const std::vector<int32_t>& prompt, const Prefilled& prefilled,
                                       const SamplingParams& params, int32_t max_batch, int32_t steps) {
  std::vector<RequestId> ids;
  while (static_cast<int32_t>(ids.size()) < max_batch) {
    absl::StatusOr<RequestId> id = engine.AdmitImport(prompt, params);
    if (absl::IsResourceExhausted(id.status())) break;
    ids.push_back(OrDie(std::move(id)));
  }
  if (ids.empty()) Die("the KV cache cannot hold one sequence of " + std::to_string(prompt.size()) + " tokens");
  for (RequestId id : ids) {
    for (const Prefilled::Rows& r : prefilled.rows) {
      OrDie(engine.ImportRows(id, r.layer, r.kind, 0, static_cast<int32_t>(prompt.size()),
                              LandedRows{r.data->data(), r.data->size(), r.data}));
    }
    OrDie(engine.StartDecode(id, prefilled.first_token).status());
  }
  std::vector<double> step_ms;
  for (int32_t s = 0; s < steps + 2; ++s) {  // the first two steps warm the decode path up
    const auto start = Clock::now();
    StepOrDie(engine);
    if (s >= 2) step_ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - start).count());
  }
  for (RequestId id : ids) engine.Abort(id);
  while (engine.HasWork()) StepOrDie(engine);
  return {static_cast<int32_t>(ids.size()), Median(step_ms)};
}

}  // namespace
}  // namespace indexcache::bench

int main(int argc, char** argv) {
  using namespace indexcache;
  using namespace indexcache::bench;
  std::map<std::string, std::string> flags = {{"index-freq", "0"}, {"contexts", "32768,65536,131072,200000"},
                                              {"chunk", "8192"},    {"kv-cache-gb", "48"},
                                              {"decode-steps", "8"}, {"max-batch", "64"}, {"device", "cuda"}};
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string key = argv[i];
    if (key.rfind("--", 0) != 0 || (!flags.count(key.substr(2)) && key != "--model")) Die("unexpected argument " + key);
    flags[key.substr(2)] = argv[i + 1];
  }
  if (!flags.count("model")) Die("--model DIR is required");
  const std::vector<int32_t> contexts = ParseList(flags["contexts"]);
  const int32_t steps = std::stoi(flags["decode-steps"]), max_batch = std::stoi(flags["max-batch"]);
  EngineOptions options;
  options.model_dir = flags["model"];
  options.device = flags["device"];  // cpu checks the flow on a small model
  options.index_freq = std::stoi(flags["index-freq"]);
  options.kv_cache_bytes = static_cast<size_t>(std::stod(flags["kv-cache-gb"]) * (1 << 30));
  options.max_batch_tokens = std::stoi(flags["chunk"]);
  std::unique_ptr<Engine> engine = OrDie(Engine::Create(options));
  const int32_t vocab = engine->config().vocab_size;
  SamplingParams params;
  params.temperature = 0.0f;
  params.max_new_tokens = steps + 8;  // no request finishes inside a timed step
  params.ignore_eos = true;

  // Warm-up: one chunk of prefill and a few decode steps (workspace growth, cuBLAS heuristics).
  {
    const std::vector<int32_t> prompt = Prompt(options.max_batch_tokens, vocab);
    const Prefilled warm = PrefillAndExport(*engine, prompt, params);
    DecodeBatch(*engine, prompt, warm, params, 1, 2);
  }
  nlohmann::json out;
  out["model"] = options.model_dir;
  out["index_freq"] = options.index_freq;
  out["prefill_chunk"] = options.max_batch_tokens;
  out["kv_cache_gb"] = std::stod(flags["kv-cache-gb"]);
  out["contexts"] = nlohmann::json::array();
  for (int32_t context : contexts) {
    const std::vector<int32_t> prompt = Prompt(context, vocab);
    const Prefilled prefilled = PrefillAndExport(*engine, prompt, params);
    std::fprintf(stderr, "context %d: prefill %.2f s (indexer %.2f s)\n", context, prefilled.ms / 1e3,
                 prefilled.stats.indexer_seconds);
    const auto [one, one_ms] = DecodeBatch(*engine, prompt, prefilled, params, 1, steps);
    const auto [most, most_ms] = DecodeBatch(*engine, prompt, prefilled, params, max_batch, steps);
    std::fprintf(stderr, "context %d: decode batch %d %.2f ms/step, batch %d %.2f ms/step\n", context, one, one_ms,
                 most, most_ms);
    out["contexts"].push_back({{"context", context},
                               {"prefill_ms", prefilled.ms},
                               {"indexer_s", prefilled.stats.indexer_seconds},
                               {"forward_s", prefilled.stats.forward_seconds},
                               {"decode_batch1_ms_per_step", one_ms},
                               {"decode_max_batch", most},
                               {"decode_max_batch_ms_per_step", most_ms}});
  }
  std::printf("%s\n", out.dump(1).c_str());
  return 0;
}
