#include "tools/indexcache/engine_flags.h"

#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "common/util/status_macros.h"
#include "nlohmann/json.hpp"

namespace indexcache::cli {

const char kEngineFlagsUsage[] =
    "  --model DIR               model directory (config.json, *.safetensors, tokenizer.json)\n"
    "  --device cpu|cuda         backend (default cpu)\n"
    "  --threads N               CPU threads (default: all cores)\n"
    "  --index-pattern FSSS...   IndexCache pattern, one F(ull)/S(hared) per layer\n"
    "  --index-freq N            keep every N-th indexer (transformers' schedule)\n"
    "  --length-patterns N:P,... an adaptive pattern: prompts of at least N tokens run pattern P (e.g.\n"
    "                            8192:FFSSSSFSSSSFSSSS); shorter ones the pattern above\n"
    "  --kv-cache-mb N           KV cache budget in MiB (default 1024)\n"
    "  --block-size N            tokens per KV block (default 64)\n"
    "  --max-batch-tokens N      tokens per forward pass / prefill chunk (default 512 on cpu, 8192 on cuda)\n"
    "  --cuda-graphs=true|false  replay decode steps as CUDA graphs on --device cuda (default true)\n"
    "  --prefix-cache=true|false share the KV blocks of common prompt prefixes between requests (default true)\n"
    "  --reuse-telemetry-rate R  share of prompt-starting steps on which Shared layers that kept indexer\n"
    "                            weights also run them, measuring the reuse's top-k overlap (default 1/64; 0: off)\n";

const char kSamplingFlagsUsage[] =
    "  --max-new-tokens N        (default 128)\n"
    "  --temperature T           0 = greedy (default 1)\n"
    "  --top-k K  --top-p P  --min-p P  --seed S\n"
    "  --stop STRING             stop string (repeatable)\n"
    "  --stop-id ID              stop token id (repeatable)\n"
    "  --ignore-eos              keep generating past end-of-sequence tokens\n";

std::set<std::string> EngineFlagNames() {
  return {"model",      "device",     "threads",          "index-pattern", "index-freq",
          "kv-cache-mb", "block-size", "max-batch-tokens", "cuda-graphs", "prefix-cache",
          "reuse-telemetry-rate", "length-patterns"};
}

std::set<std::string> SamplingFlagNames() {
  return {"max-new-tokens", "temperature", "top-k", "top-p", "min-p", "seed", "stop", "stop-id"};
}

std::set<std::string> SamplingSwitchNames() { return {"ignore-eos"}; }

namespace {

// A `--name=true|false` flag: `current` when absent.
absl::StatusOr<bool> BoolFlag(const Args& args, const std::string& name, bool current) {
  const auto value = args.Get(name);
  if (!value) return current;
  if (*value != "true" && *value != "false") {
    return absl::InvalidArgumentError(absl::StrCat("--", name, " takes true or false, got '", *value, "'"));
  }
  return *value == "true";
}

}  // namespace

absl::StatusOr<EngineOptions> EngineOptionsFromArgs(const Args& args) {
  EngineOptions o;
  ASSIGN_OR_RETURN(o.model_dir, args.Require("model"));
  o.device = args.Get("device").value_or("cpu");
  o.index_pattern = args.Get("index-pattern").value_or("");
  o.length_patterns = args.Get("length-patterns").value_or("");
  ASSIGN_OR_RETURN(auto threads, args.GetInt("threads"));
  ASSIGN_OR_RETURN(auto freq, args.GetInt("index-freq"));
  ASSIGN_OR_RETURN(auto kv_mb, args.GetInt("kv-cache-mb"));
  ASSIGN_OR_RETURN(auto block, args.GetInt("block-size"));
  ASSIGN_OR_RETURN(auto batch_tokens, args.GetInt("max-batch-tokens"));
  ASSIGN_OR_RETURN(auto telemetry_rate, args.GetDouble("reuse-telemetry-rate"));
  if (freq && *freq < 1) return absl::InvalidArgumentError("--index-freq must be >= 1");
  if (kv_mb && *kv_mb < 1) return absl::InvalidArgumentError("--kv-cache-mb must be >= 1");
  if (telemetry_rate && !(*telemetry_rate >= 0 && *telemetry_rate <= 1)) {
    return absl::InvalidArgumentError("--reuse-telemetry-rate must lie in [0, 1]");
  }
  if (!o.index_pattern.empty() && freq) {
    return absl::InvalidArgumentError("give --index-pattern or --index-freq, not both");
  }
  if (threads) o.num_threads = static_cast<int>(*threads);
  if (freq) o.index_freq = static_cast<int32_t>(*freq);
  if (kv_mb) o.kv_cache_bytes = static_cast<size_t>(*kv_mb) << 20;
  if (block) o.block_size = static_cast<int32_t>(*block);
  if (telemetry_rate) o.reuse_telemetry_rate = *telemetry_rate;
  o.max_batch_tokens = batch_tokens ? static_cast<int32_t>(*batch_tokens) : DefaultMaxBatchTokens(o.device);
  ASSIGN_OR_RETURN(o.cuda_graphs, BoolFlag(args, "cuda-graphs", o.cuda_graphs));
  ASSIGN_OR_RETURN(o.prefix_cache, BoolFlag(args, "prefix-cache", o.prefix_cache));
  return o;
}

absl::StatusOr<SamplingParams> SamplingParamsFromArgs(const Args& args) {
  SamplingParams p;
  ASSIGN_OR_RETURN(auto max_new, args.GetInt("max-new-tokens"));
  ASSIGN_OR_RETURN(auto temperature, args.GetDouble("temperature"));
  ASSIGN_OR_RETURN(auto top_k, args.GetInt("top-k"));
  ASSIGN_OR_RETURN(auto top_p, args.GetDouble("top-p"));
  ASSIGN_OR_RETURN(auto min_p, args.GetDouble("min-p"));
  ASSIGN_OR_RETURN(auto seed, args.GetInt("seed"));
  if (max_new) p.max_new_tokens = static_cast<int32_t>(*max_new);
  if (temperature) p.temperature = static_cast<float>(*temperature);
  if (top_k) p.top_k = static_cast<int32_t>(*top_k);
  if (top_p) p.top_p = static_cast<float>(*top_p);
  if (min_p) p.min_p = static_cast<float>(*min_p);
  if (seed) p.seed = static_cast<uint64_t>(*seed);
  p.stop_strings = args.GetAll("stop");
  for (const std::string& id : args.GetAll("stop-id")) {
    char* end = nullptr;
    const long v = std::strtol(id.c_str(), &end, 10);
    if (id.empty() || *end != '\0') return absl::InvalidArgumentError(absl::StrCat("--stop-id expects an integer, got '", id, "'"));
    p.stop_token_ids.push_back(static_cast<int32_t>(v));
  }
  p.ignore_eos = args.Has("ignore-eos");
  return p;
}

absl::StatusOr<std::vector<int32_t>> ReadTokenIdsFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::stringstream text;
  text << in.rdbuf();
  nlohmann::json j = nlohmann::json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_array()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": expected a JSON array of token ids"));
  }
  std::vector<int32_t> ids;
  for (const auto& e : j) {
    if (!e.is_number_integer() || e.get<int64_t>() < 0 || e.get<int64_t>() > INT32_MAX) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": element ", e.dump(), " is not a token id"));
    }
    ids.push_back(e.get<int32_t>());
  }
  return ids;
}

absl::StatusOr<std::vector<int32_t>> PromptFromArgs(const Args& args, const Engine& engine) {
  if (args.Has("prompt") == args.Has("input-ids")) {
    return absl::InvalidArgumentError("give exactly one of --prompt TEXT and --input-ids FILE.json");
  }
  if (args.Has("input-ids")) return ReadTokenIdsFile(*args.Get("input-ids"));
  if (engine.tokenizer() == nullptr) {
    return absl::FailedPreconditionError("--prompt needs the model's tokenizer.json; use --input-ids instead");
  }
  return engine.tokenizer()->Encode(*args.Get("prompt"));
}

}  // namespace indexcache::cli
