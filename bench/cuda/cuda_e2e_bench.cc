// End-to-end timing of the engine on --device cuda: prefill (prompt → first token, one chunk) at the
// given lengths and decode ms/token at one context, for one IndexCache pattern. Decode is timed twice
// in the same process, op by op ("decode_eager") and replayed as CUDA graphs ("decode"). Prints JSON
// on stdout. bench/cuda/run_cuda_bench.sh runs it beside transformers eager on the same GPU and model.
//   cuda_e2e_bench --model DIR [--index-freq F] [--prefill 2048,8192,16384] [--decode-context 16384]
//                  [--decode-steps 32] [--decode-batch 1] [--reps 3] [--chunk N (default: one chunk)]
//                  [--kv-cache-gb 4]
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
  std::fprintf(stderr, "cuda_e2e_bench: %s\n", what.c_str());
  std::exit(1);
}

// Runs the engine until it has no work; returns the wall time of each step in ms.
std::vector<double> RunToEnd(Engine& engine) {
  std::vector<double> steps;
  while (engine.HasWork()) {
    const auto start = Clock::now();
    auto events = engine.Step();
    if (!events.ok()) Die(events.status().ToString());
    for (const TokenEvent& e : *events) {
      if (e.finish == RequestFinish::kError) Die(e.error.ToString());
    }
    steps.push_back(std::chrono::duration<double, std::milli>(Clock::now() - start).count());
  }
  return steps;
}

// Decodes `batch` copies of a `context`-token prompt for `steps` tokens each; returns the median wall
// time of the steps in which every sequence decodes (ms per step; each step yields `batch` tokens).
nlohmann::json TimeDecode(Engine& e, int32_t context, int32_t steps, int32_t batch, int32_t chunk) {
  SamplingParams decode;
  decode.temperature = 0.0f;
  decode.max_new_tokens = steps + 1;
  decode.ignore_eos = true;
  for (int32_t b = 0; b < batch; ++b) {
    auto id = e.Submit(Prompt(context, e.config().vocab_size), decode);
    if (!id.ok()) Die(id.status().ToString());
  }
  std::vector<double> step_ms = RunToEnd(e);
  // The first steps are the prompts' prefill chunks; the next two warm the decode path up (and
  // record the graphs of its buckets).
  const size_t prefill_steps = static_cast<size_t>(batch) * ((context + chunk - 1) / chunk);
  std::vector<double> decode_ms(step_ms.begin() + std::min(prefill_steps + 2, step_ms.size() - 1), step_ms.end());
  return {{"context", context}, {"batch", batch}, {"steps", decode_ms.size()}, {"ms_per_token", Median(decode_ms)},
          {"ms_per_token_min", *std::min_element(decode_ms.begin(), decode_ms.end())}};
}

}  // namespace
}  // namespace indexcache::bench

int main(int argc, char** argv) {
  using namespace indexcache;
  using namespace indexcache::bench;
  std::map<std::string, std::string> flags = {{"index-freq", "0"}, {"prefill", "2048,8192,16384"},
                                              {"decode-context", "16384"}, {"decode-steps", "32"},
                                              {"decode-batch", "1"}, {"reps", "3"},
                                              {"chunk", "0"}, {"kv-cache-gb", "4"}};
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string key = argv[i];
    if (key.rfind("--", 0) != 0) Die("unexpected argument " + key);
    flags[key.substr(2)] = argv[i + 1];
  }
  if (!flags.count("model")) Die("--model DIR is required");
  const std::vector<int32_t> prefill = ParseList(flags["prefill"]);
  const int32_t decode_context = std::stoi(flags["decode-context"]), steps = std::stoi(flags["decode-steps"]);
  const int32_t reps = std::stoi(flags["reps"]), decode_batch = std::stoi(flags["decode-batch"]);
  if (prefill.empty() || reps < 1 || steps < 3 || decode_batch < 1 || decode_context < 1) {
    Die("--prefill needs a length, --reps >= 1, --decode-steps >= 3, --decode-batch >= 1, --decode-context >= 1");
  }
  EngineOptions options;
  options.model_dir = flags["model"];
  options.device = "cuda";
  options.index_freq = std::stoi(flags["index-freq"]);
  options.kv_cache_bytes = static_cast<size_t>(std::stod(flags["kv-cache-gb"]) * (1 << 30));
  const int32_t chunk = std::stoi(flags["chunk"]);
  options.max_batch_tokens =
      chunk > 0 ? chunk : std::max(*std::max_element(prefill.begin(), prefill.end()), decode_context);
  auto engine = Engine::Create(options);
  if (!engine.ok()) Die(engine.status().ToString());
  Engine& e = **engine;
  const int32_t vocab = e.config().vocab_size;
  nlohmann::json out;
  out["model"] = options.model_dir;
  out["index_freq"] = options.index_freq;
  out["prefill_chunk"] = options.max_batch_tokens;
  SamplingParams one;
  one.temperature = 0.0f;
  one.max_new_tokens = 1;
  one.ignore_eos = true;
  out["prefill"] = nlohmann::json::array();
  for (int32_t length : prefill) {
    std::vector<double> times;
    for (int32_t r = 0; r < reps + 1; ++r) {  // the first run warms up (workspace, cuBLAS heuristics)
      auto id = e.Submit(Prompt(length, vocab), one);
      if (!id.ok()) Die(id.status().ToString());
      const auto start = Clock::now();
      RunToEnd(e);
      if (r > 0) times.push_back(std::chrono::duration<double, std::milli>(Clock::now() - start).count());
    }
    const IndexCacheStats stats = e.TakeStats();
    out["prefill"].push_back({{"tokens", length}, {"ms", Median(times)}, {"indexer_s_total", stats.indexer_seconds}});
    std::fprintf(stderr, "prefill %d: %.1f ms\n", length, Median(times));
  }
  for (const bool graphs : {false, true}) {
    e.model().set_decode_graphs(graphs);
    const char* key = graphs ? "decode" : "decode_eager";
    out[key] = TimeDecode(e, decode_context, steps, decode_batch, options.max_batch_tokens);
    std::fprintf(stderr, "%s at %d, batch %d: %.3f ms/step\n", key, decode_context, decode_batch,
                 out[key]["ms_per_token"].get<double>());
  }
  if (!e.model().decode_graphs()) Die("the backend did not keep decode graphs on");
  std::printf("%s\n", out.dump(1).c_str());
  return 0;
}
