// Agentic multi-turn benchmark (issue 16, part 5): replays a synthetic agentic trace (agentic_trace.h:
// sessions whose context grows by the generated tokens and new ids every turn) against the real
// `indexcache` router and workers, started as child processes on loopback, twice on fresh clusters —
// the workers' prefix cache off, then on — and reports what the cache saves: client-side TTFT, the
// prefill tokens computed (prompt tokens sent minus the prefill workers' prefix cache hits), hit rates,
// how often a session's next turn reaches the worker holding its prefix, the load per worker, and the
// router's routing decisions when it exports them (agentic_report.h). It measures; it does not check.
// bench/agentic/run_agentic_bench.sh runs it on the CPU with the bundled model.
#include <fstream>
#include <iostream>
#include <set>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "bench/agentic/agentic_replay.h"
#include "bench/agentic/agentic_report.h"
#include "bench/agentic/agentic_trace.h"
#include "bench/agentic/cluster_counters.h"
#include "bench/run_info.h"
#include "bench/serving/local_cluster.h"
#include "common/model/model_config.h"
#include "common/util/status_macros.h"
#include "nlohmann/json.hpp"
#include "tools/indexcache/args.h"

namespace indexcache::bench {
namespace {

constexpr char kUsage[] =
    "usage: indexcache_agentic_bench [flags]\n"
    "  --model DIR              model directory (default the bundled glm-dsa-trained)\n"
    "  --binary PATH            the `indexcache` CLI the cluster runs (default: this build's)\n"
    "  --device cpu|cuda        the workers' device (default cpu)\n"
    "  --prefill N --decode M   workers per role (default 1 and 1)\n"
    "  --sessions S --turns T   the trace: S sessions of T turns (default 16 x 8)\n"
    "  --first-turn-tokens N    ids of a session's first prompt (default 1024)\n"
    "  --turn-tokens N          new ids a turn appends after the previous turn's generated tokens (default 256)\n"
    "  --max-new-tokens N       tokens generated a turn, greedy with ignore_eos (default 16)\n"
    "  --concurrency N          sessions in flight at once (default 4)\n"
    "  --seed N                 the trace's ids (default 1)\n"
    "  --threads N              engine threads per worker (default 1)\n"
    "  --kv-cache-mb MB         KV cache per worker (default 256)\n"
    "  --max-batch-tokens N     the workers' prefill chunk (default: theirs)\n"
    "  --block-size N           the workers' KV block, the prefix cache's unit (default 64)\n"
    "  --transport grpc|tcp     handoff transport (default tcp)\n"
    "  --worker-arg ARG         one more argument for every worker (repeatable)\n"
    "  --start-timeout S --request-timeout S   (default 300, 600)\n"
    "  --device-name TEXT --git-commit SHA --command TEXT   recorded in the report\n"
    "  --json PATH --markdown PATH\n";

struct Options {
  LocalClusterOptions cluster;
  AgenticTraceSpec trace;
  int concurrency = 4;
  int block_size = 64;
};

// A positive integer flag, or its default.
absl::StatusOr<int> PositiveFlag(const cli::Args& args, const std::string& name, int fallback) {
  ASSIGN_OR_RETURN(std::optional<int64_t> v, args.GetInt(name));
  if (!v) return fallback;
  if (*v < 1 || *v > 1'000'000'000)
    return absl::InvalidArgumentError(absl::StrCat("--", name, " must be positive, got ", *v));
  return static_cast<int>(*v);
}

absl::StatusOr<Options> OptionsFromArgs(const cli::Args& args) {
  Options o;
  LocalClusterOptions& c = o.cluster;
  c.binary = args.Get("binary").value_or(INDEXCACHE_CLI_BINARY);
  c.model = args.Get("model").value_or(std::string(INDEXCACHE_MODELS_DIR) + "/glm-dsa-trained");
  c.device = args.Get("device").value_or("cpu");
  if (c.device != "cpu" && c.device != "cuda")
    return absl::InvalidArgumentError("--device must be cpu or cuda, got " + c.device);
  c.transport = args.Get("transport").value_or("tcp");
  if (c.transport != "grpc" && c.transport != "tcp") {
    return absl::InvalidArgumentError("--transport must be grpc or tcp, got " + c.transport);
  }
  ASSIGN_OR_RETURN(c.prefill_workers, PositiveFlag(args, "prefill", 1));
  ASSIGN_OR_RETURN(c.decode_workers, PositiveFlag(args, "decode", 1));
  ASSIGN_OR_RETURN(c.threads, PositiveFlag(args, "threads", 1));
  ASSIGN_OR_RETURN(c.kv_cache_mb, PositiveFlag(args, "kv-cache-mb", 256));
  ASSIGN_OR_RETURN(std::optional<int64_t> chunk, args.GetInt("max-batch-tokens"));
  if (chunk && *chunk < 1) return absl::InvalidArgumentError("--max-batch-tokens must be positive");
  c.max_batch_tokens = chunk ? static_cast<int>(*chunk) : 0;
  c.worker_args = args.GetAll("worker-arg");
  for (const std::string& a : c.worker_args) {
    // The benchmark sets the prefix cache itself, once off and once on, and the block it counts in.
    if (a.rfind("--prefix-cache", 0) == 0 || a.rfind("--block-size", 0) == 0)
      return absl::InvalidArgumentError("--worker-arg " + a + ": the benchmark sets --prefix-cache and --block-size");
  }
  ASSIGN_OR_RETURN(const int start_timeout, PositiveFlag(args, "start-timeout", 300));
  ASSIGN_OR_RETURN(const int request_timeout, PositiveFlag(args, "request-timeout", 600));
  c.start_timeout = absl::Seconds(start_timeout);
  c.request_timeout = absl::Seconds(request_timeout);
  c.serve_metrics = true;

  AgenticTraceSpec& t = o.trace;
  ASSIGN_OR_RETURN(t.sessions, PositiveFlag(args, "sessions", t.sessions));
  ASSIGN_OR_RETURN(t.turns, PositiveFlag(args, "turns", t.turns));
  ASSIGN_OR_RETURN(t.first_turn_tokens, PositiveFlag(args, "first-turn-tokens", t.first_turn_tokens));
  ASSIGN_OR_RETURN(t.turn_tokens, PositiveFlag(args, "turn-tokens", t.turn_tokens));
  ASSIGN_OR_RETURN(t.max_new_tokens, PositiveFlag(args, "max-new-tokens", t.max_new_tokens));
  ASSIGN_OR_RETURN(const int seed, PositiveFlag(args, "seed", static_cast<int>(t.seed)));
  t.seed = static_cast<uint32_t>(seed);
  ASSIGN_OR_RETURN(o.concurrency, PositiveFlag(args, "concurrency", o.concurrency));
  ASSIGN_OR_RETURN(o.block_size, PositiveFlag(args, "block-size", o.block_size));
  c.worker_args.insert(c.worker_args.end(), {"--block-size", std::to_string(o.block_size)});
  return o;
}

// One replay of the trace on a fresh cluster, the workers' prefix cache `prefix_cache`.
absl::StatusOr<AgenticRun> RunOnce(const Options& o, bool prefix_cache, int32_t vocab) {
  const std::string label = prefix_cache ? "prefix cache on" : "prefix cache off";
  LocalClusterOptions co = o.cluster;
  co.worker_args.push_back(absl::StrCat("--prefix-cache=", prefix_cache ? "true" : "false"));
  std::cerr << "starting the cluster (" << co.prefill_workers << " prefill, " << co.decode_workers
            << " decode workers, " << label << ")\n";
  ASSIGN_OR_RETURN(std::unique_ptr<LocalCluster> cluster, LocalCluster::Start(co));
  AgenticRun run;
  run.prefix_cache = prefix_cache;
  run.block_size = o.block_size;
  run.workers = cluster->workers();
  run.command_lines = cluster->command_lines();
  const absl::StatusOr<ClusterCounters> before = ScrapeClusterCounters(*cluster);
  run.replay = ReplayTrace(cluster->client(), o.trace, o.concurrency, vocab, label);
  const absl::StatusOr<ClusterCounters> after = ScrapeClusterCounters(*cluster);
  if (!before.ok()) {
    run.counters = before.status();
  } else if (!after.ok()) {
    run.counters = after.status();
  } else {
    run.counters = *after - *before;
  }
  return run;
}

absl::Status Main(const std::vector<std::string>& argv) {
  const std::set<std::string> valued = {"model",
                                        "binary",
                                        "device",
                                        "prefill",
                                        "decode",
                                        "sessions",
                                        "turns",
                                        "first-turn-tokens",
                                        "turn-tokens",
                                        "max-new-tokens",
                                        "concurrency",
                                        "seed",
                                        "threads",
                                        "kv-cache-mb",
                                        "max-batch-tokens",
                                        "block-size",
                                        "transport",
                                        "worker-arg",
                                        "start-timeout",
                                        "request-timeout",
                                        "device-name",
                                        "git-commit",
                                        "command",
                                        "json",
                                        "markdown"};
  ASSIGN_OR_RETURN(cli::Args args,
                   cli::Args::Parse(std::vector<std::string>(argv.begin() + 1, argv.end()), valued, {"help"}));
  if (args.Has("help")) {
    std::cout << kUsage;
    return absl::OkStatus();
  }
  ASSIGN_OR_RETURN(const Options o, OptionsFromArgs(args));
  ASSIGN_OR_RETURN(const ModelConfig config, LoadModelConfig(o.cluster.model));
  RETURN_IF_ERROR(ValidateTrace(o.trace, config.max_position_embeddings));

  RunInfo machine = ProbeMachine();
  const AgenticTraceSpec& t = o.trace;
  const LocalClusterOptions& c = o.cluster;
  nlohmann::json report = {
      {"date", machine.date},
      {"cpu_model", machine.cpu_model},
      {"logical_cores", machine.logical_cores},
      {"device_name", args.Get("device-name").value_or(c.device == "cpu" ? machine.cpu_model : c.device)},
      {"git_commit", args.Get("git-commit").value_or("unknown")},
      {"command", args.Get("command").value_or(absl::StrJoin(argv, " "))},
      {"driver_command", absl::StrJoin(argv, " ")},
      {"model", c.model},
      {"load_before", machine.load_before},
      {"trace",
       {{"sessions", t.sessions},
        {"turns", t.turns},
        {"first_turn_tokens", t.first_turn_tokens},
        {"turn_tokens", t.turn_tokens},
        {"max_new_tokens", t.max_new_tokens},
        {"concurrency", o.concurrency},
        {"seed", t.seed},
        {"longest_context", LongestContext(t)},
        {"model_max_context", config.max_position_embeddings}}},
      {"cluster",
       {{"prefill", c.prefill_workers},
        {"decode", c.decode_workers},
        {"device", c.device},
        {"transport", c.transport},
        {"threads", c.threads},
        {"kv_cache_mb", c.kv_cache_mb},
        {"block_size", o.block_size},
        {"max_batch_tokens", c.max_batch_tokens},
        {"worker_args", c.worker_args}}},
      {"runs", nlohmann::json::array()}};
  for (const bool prefix_cache : {false, true}) {
    absl::StatusOr<AgenticRun> run = RunOnce(o, prefix_cache, config.vocab_size);
    if (!run.ok()) return Annotate(run.status(), prefix_cache ? "the prefix-cache-on run" : "the prefix-cache-off run");
    report["runs"].push_back(RunJson(*run));
  }
  report["comparison"] = ComparisonJson(report["runs"][0], report["runs"][1]);
  report["load_after"] = LoadAverage();

  const std::string md = ReportMarkdown(report);
  std::cout << md;
  if (const auto path = args.Get("json")) std::ofstream(*path) << report.dump(2) << "\n";
  if (const auto path = args.Get("markdown")) std::ofstream(*path) << md;
  return absl::OkStatus();
}

}  // namespace
}  // namespace indexcache::bench

int main(int argc, char** argv) {
  const absl::Status status = indexcache::bench::Main(std::vector<std::string>(argv, argv + argc));
  if (!status.ok()) {
    std::cerr << "indexcache_agentic_bench: " << status << "\n";
    return 1;
  }
  return 0;
}
