// `indexcache generate`: one request through the engine's step loop, text streamed as it is decoded.
#include <chrono>
#include <cstdio>
#include <iostream>

#include "absl/strings/str_format.h"
#include "common/util/status_macros.h"
#include "nlohmann/json.hpp"
#include "tools/indexcache/commands.h"
#include "tools/indexcache/engine_flags.h"

namespace indexcache::cli {
namespace {

constexpr char kGenerateUsage[] =
    "usage: indexcache generate --model DIR (--prompt TEXT | --input-ids FILE.json) [--json] [flags]\n";

struct Generation {
  std::vector<int32_t> prompt;
  std::vector<int32_t> output_ids;
  std::string text;
  bool has_tokenizer = false;  // `text` is meaningful only with a tokenizer
  RequestFinish finish = RequestFinish::kNone;
  double first_token_seconds = 0.0;
  double total_seconds = 0.0;
  IndexCacheStats stats;
  std::string pattern;
};

// Reuse telemetry's rows and mean overlap per measured Shared layer (--reuse-telemetry-rate).
nlohmann::json ReuseOverlapJson(const ReuseOverlapByLayer& layers) {
  nlohmann::json out = nlohmann::json::object();
  for (size_t l = 0; l < layers.size(); ++l) {
    if (layers[l].rows == 0) continue;
    out[std::to_string(l)] = {{"rows", layers[l].rows}, {"mean", layers[l].sum / static_cast<double>(layers[l].rows)}};
  }
  return out;
}

nlohmann::json StatsJson(const Generation& g) {
  return {{"index_pattern", g.pattern},
          {"reuse_topk_overlap", ReuseOverlapJson(g.stats.reuse_overlap)},
          {"indexer_runs", g.stats.indexer_runs},
          {"indexer_skips", g.stats.indexer_skips},
          {"indexer_flops", g.stats.indexer_flops},
          {"indexer_seconds", g.stats.indexer_seconds},
          {"index_key_bytes_not_stored", g.stats.index_key_bytes_not_stored}};
}

absl::StatusOr<Generation> Generate(const Args& args, bool stream) {
  ASSIGN_OR_RETURN(EngineOptions options, EngineOptionsFromArgs(args));
  ASSIGN_OR_RETURN(SamplingParams params, SamplingParamsFromArgs(args));
  ASSIGN_OR_RETURN(std::unique_ptr<Engine> engine, Engine::Create(options));
  Generation g;
  ASSIGN_OR_RETURN(g.prompt, PromptFromArgs(args, *engine));
  const auto start = std::chrono::steady_clock::now();
  ASSIGN_OR_RETURN(RequestId id, engine->Submit(g.prompt, params));
  while (g.finish == RequestFinish::kNone) {
    ASSIGN_OR_RETURN(std::vector<TokenEvent> events, engine->Step());
    for (TokenEvent& e : events) {
      if (e.request != id) continue;
      if (e.finish == RequestFinish::kError) return e.error;
      if (e.token >= 0) {
        if (g.output_ids.empty()) {
          g.first_token_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        }
        g.output_ids.push_back(e.token);
      }
      g.text += e.text;
      if (stream) {
        if (engine->tokenizer() != nullptr) {
          std::fwrite(e.text.data(), 1, e.text.size(), stdout);
        } else if (e.token >= 0) {
          std::printf("%d ", e.token);
        }
        std::fflush(stdout);
      }
      g.finish = e.finish;
    }
  }
  g.total_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  g.has_tokenizer = engine->tokenizer() != nullptr;
  g.stats = engine->TakeStats();
  g.pattern = FormatIndexPattern(engine->PatternTypesFor(static_cast<int64_t>(g.prompt.size()), 0));
  return g;
}

}  // namespace

int RunGenerate(const std::vector<std::string>& argv) {
  std::set<std::string> valued = EngineFlagNames();
  valued.merge(SamplingFlagNames());
  valued.insert({"prompt", "input-ids"});
  std::set<std::string> switches = SamplingSwitchNames();
  switches.insert({"json", "help"});
  auto args = Args::Parse(argv, valued, switches);
  if (!args.ok()) return Fail("generate", std::string(args.status().message()) + "\n" + kGenerateUsage);
  if (args->Has("help")) {
    std::cout << kGenerateUsage << kEngineFlagsUsage << kSamplingFlagsUsage;
    return 0;
  }
  const bool json = args->Has("json");
  auto g = Generate(*args, /*stream=*/!json);
  if (!g.ok()) return Fail("generate", std::string(g.status().message()));
  if (json) {
    nlohmann::json out = {{"output_ids", g->output_ids},
                          {"prompt_tokens", g->prompt.size()},
                          {"finish_reason", RequestFinishName(g->finish)},
                          {"time_to_first_token_s", g->first_token_seconds},
                          {"total_s", g->total_seconds},
                          {"indexcache", StatsJson(*g)}};
    if (g->has_tokenizer) out["text"] = g->text;
    std::cout << out.dump() << std::endl;
  } else {
    std::cout << std::endl;
    std::cerr << absl::StrFormat("%d prompt + %d generated tokens in %.3f s (first token %.3f s); IndexCache %s\n",
                                 g->prompt.size(), g->output_ids.size(), g->total_seconds, g->first_token_seconds,
                                 StatsJson(*g).dump());
  }
  return 0;
}

int Fail(const std::string& command, const std::string& message) {
  std::cerr << "indexcache " << command << ": " << message << std::endl;
  return 1;
}

}  // namespace indexcache::cli
