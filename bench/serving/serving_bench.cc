// Serving load benchmark: for each handoff transport, starts the real `indexcache` router, one prefill
// worker and one decode worker as child processes on loopback, then runs a closed loop of
// `--concurrency` clients, each issuing streaming greedy Generate calls (random prompts of
// `--prompt-len` ids, `--max-new-tokens` with ignore_eos) back to back for `--duration` seconds.
// It reports throughput, client-side time to first token and inter-token latency percentiles, the
// server's handoff time, and the handoff bandwidth implied by the analytic KV + index-key bytes per
// request, beside this machine's memcpy bandwidth. It measures; it does not check.
#include <fstream>
#include <iostream>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "bench/memory_copy.h"
#include "bench/run_info.h"
#include "bench/serving/local_cluster.h"
#include "bench/serving/timed_stream.h"
#include "common/model/model_config.h"
#include "common/util/status_macros.h"
#include "nlohmann/json.hpp"
#include "tools/indexcache/args.h"

namespace indexcache::bench {
namespace {

constexpr char kUsage[] =
    "usage: indexcache_serving_bench [flags]\n"
    "  --model DIR            model directory (default the bundled glm-dsa-trained)\n"
    "  --transports LIST      comma-separated handoff transports (default grpc,tcp)\n"
    "  --concurrency N        concurrent closed-loop clients (default 8)\n"
    "  --duration S           seconds of load per transport (default 10)\n"
    "  --prompt-len N         prompt ids per request (default 256)\n"
    "  --max-new-tokens N     generated tokens per request (default 32)\n"
    "  --threads N            engine threads per worker (default 1)\n"
    "  --json PATH            write the results as JSON\n"
    "  --markdown PATH        write the results as a markdown table\n";

struct Options {
  std::string model;
  std::vector<std::string> transports;
  int concurrency = 8;
  double duration = 10;
  int prompt_len = 256;
  int max_new_tokens = 32;
  int threads = 1;
  std::string json_path;
  std::string markdown_path;
};

// What the closed loop measured for one transport. Latencies in seconds.
struct LoadResult {
  std::string transport;
  double wall_seconds = 0;
  int64_t completed = 0;
  int64_t failed = 0;
  std::string first_error;
  int64_t output_tokens = 0;
  std::vector<double> ttft;
  std::vector<double> itl;  // one entry per token that came after the first chunk
  int64_t first_chunk_tokens = 0;  // tokens that came with the first chunk (no inter-token gap)
  std::vector<double> total;
  std::vector<double> handoff;
  std::vector<double> handoff_beyond_prefill;  // handoff_seconds - prefill_seconds
  int64_t prompt_tokens = 0;  // as the server reported it (FinalInfo)
};

// KV + index-key bytes the prefill worker ships per request: the MLA latent row of every layer and the
// indexer key of every Full layer, in the cache's dtype — f32 on the CPU workers this bench starts.
int64_t HandoffBytes(const ModelConfig& config, int64_t prompt_tokens) {
  const int64_t per_token = static_cast<int64_t>(config.num_layers) * config.latent_cache_dim() +
                            static_cast<int64_t>(config.num_full_layers()) * config.index_head_dim;
  return prompt_tokens * per_token * 4;
}

// One streaming request; records into `r` (under `mu`).
void RunOne(const client::Client& client, const client::GenerateRequest& request, std::mutex& mu, LoadResult& r) {
  TimedStream t = TimeStream(client, request);
  std::lock_guard<std::mutex> lock(mu);
  if (!t.status.ok()) {
    if (r.failed++ == 0) r.first_error = t.status.ToString();
    return;
  }
  ++r.completed;
  r.output_tokens += t.tokens;
  r.ttft.push_back(t.ttft);
  r.itl.insert(r.itl.end(), t.itl.begin(), t.itl.end());
  r.total.push_back(t.total);
  r.first_chunk_tokens += t.first_chunk_tokens;
  r.handoff.push_back(t.final->timings.handoff_seconds);
  r.handoff_beyond_prefill.push_back(t.final->timings.handoff_seconds - t.final->timings.prefill_seconds);
  r.prompt_tokens = t.final->prompt_tokens;
}

absl::StatusOr<LoadResult> RunTransport(const Options& o, const std::string& transport, int32_t vocab) {
  std::cerr << "starting the cluster (transport " << transport << ")\n";
  LocalClusterOptions cluster_options;
  cluster_options.binary = INDEXCACHE_CLI_BINARY;
  cluster_options.model = o.model;
  cluster_options.transport = transport;
  cluster_options.threads = o.threads;
  ASSIGN_OR_RETURN(auto cluster, LocalCluster::Start(cluster_options));
  LoadResult r;
  r.transport = transport;
  std::mutex mu;
  {
    std::mt19937 rng(7);
    LoadResult warmup;
    RunOne(cluster->client(), RandomRequest(static_cast<uint32_t>(rng()), o.prompt_len, o.max_new_tokens, vocab), mu, warmup);
    if (warmup.completed != 1) return absl::InternalError("warm-up request failed: " + warmup.first_error);
  }
  std::cerr << "running " << o.concurrency << " clients for " << o.duration << " s\n";
  const double start = NowSeconds();
  const double stop = start + o.duration;
  std::vector<std::thread> threads;
  for (int i = 0; i < o.concurrency; ++i) {
    threads.emplace_back([&, i] {
      std::mt19937 rng(1000 + static_cast<uint32_t>(i));
      while (NowSeconds() < stop) {
        RunOne(cluster->client(), RandomRequest(static_cast<uint32_t>(rng()), o.prompt_len, o.max_new_tokens, vocab), mu, r);
      }
    });
  }
  for (auto& t : threads) t.join();
  r.wall_seconds = NowSeconds() - start;
  return r;
}

nlohmann::json ResultJson(const LoadResult& r, const ModelConfig& config, double memcpy_bps) {
  const double handoff_p50 = Percentile(r.handoff, 50);
  const int64_t bytes = HandoffBytes(config, r.prompt_tokens);
  return {{"transport", r.transport},
          {"wall_seconds", r.wall_seconds},
          {"completed", r.completed},
          {"failed", r.failed},
          {"first_error", r.first_error},
          {"requests_per_second", static_cast<double>(r.completed) / r.wall_seconds},
          {"output_tokens_per_second", static_cast<double>(r.output_tokens) / r.wall_seconds},
          {"ttft_seconds", {{"p50", Percentile(r.ttft, 50)}, {"p90", Percentile(r.ttft, 90)}, {"p99", Percentile(r.ttft, 99)}}},
          {"itl_seconds", {{"p50", Percentile(r.itl, 50)}, {"p90", Percentile(r.itl, 90)}, {"p99", Percentile(r.itl, 99)}}},
          {"total_seconds_p50", Percentile(r.total, 50)},
          {"first_chunk_tokens_mean", r.completed > 0 ? static_cast<double>(r.first_chunk_tokens) / r.completed : 0.0},
          {"handoff_seconds_p50", handoff_p50},
          {"handoff_beyond_prefill_seconds_p50", Percentile(r.handoff_beyond_prefill, 50)},
          {"handoff_bytes_per_request", bytes},
          {"handoff_bytes_per_second", handoff_p50 > 0 ? static_cast<double>(bytes) / handoff_p50 : 0.0},
          {"memcpy_copy_bytes_per_second", memcpy_bps}};
}

std::string Markdown(const nlohmann::json& report) {
  std::string md = absl::StrFormat(
      "# Serving benchmark %s\n\n- CPU: %s\n- command: `%s`\n- model: %s, prompt %d ids, %d new tokens, greedy, "
      "concurrency %d, %.0f s per transport; router + 1 prefill + 1 decode worker on loopback\n- loopback memcpy "
      "(64 MiB, same process): %.2f GB/s copied (%.2f GB/s read+write)\n\n",
      report["date"].get<std::string>(), report["cpu_model"].get<std::string>(), report["command"].get<std::string>(),
      report["model"].get<std::string>(), report["prompt_len"].get<int>(), report["max_new_tokens"].get<int>(),
      report["concurrency"].get<int>(), report["duration_seconds"].get<double>(),
      report["memcpy_copy_bytes_per_second"].get<double>() / 1e9,
      2 * report["memcpy_copy_bytes_per_second"].get<double>() / 1e9);
  md +=
      "| transport | ok / failed | req/s | out tok/s | TTFT p50 / p90 / p99 (ms) | ITL p50 / p90 / p99 (ms) | "
      "tokens in 1st chunk | handoff p50 (ms) | handoff - prefill p50 (ms) | handoff bytes/req | handoff GB/s |\n"
      "|---|---|---|---|---|---|---|---|---|---|---|\n";
  for (const auto& r : report["results"]) {
    md += absl::StrFormat(
        "| %s | %d / %d | %.2f | %.1f | %.1f / %.1f / %.1f | %.2f / %.2f / %.2f | %.1f | %.2f | %.2f | %d | %.4f |\n",
        r["transport"].get<std::string>(), r["completed"].get<int64_t>(), r["failed"].get<int64_t>(),
        r["requests_per_second"].get<double>(), r["output_tokens_per_second"].get<double>(),
        1e3 * r["ttft_seconds"]["p50"].get<double>(), 1e3 * r["ttft_seconds"]["p90"].get<double>(),
        1e3 * r["ttft_seconds"]["p99"].get<double>(), 1e3 * r["itl_seconds"]["p50"].get<double>(),
        1e3 * r["itl_seconds"]["p90"].get<double>(), 1e3 * r["itl_seconds"]["p99"].get<double>(),
        r["first_chunk_tokens_mean"].get<double>(), 1e3 * r["handoff_seconds_p50"].get<double>(),
        1e3 * r["handoff_beyond_prefill_seconds_p50"].get<double>(), r["handoff_bytes_per_request"].get<int64_t>(),
        r["handoff_bytes_per_second"].get<double>() / 1e9);
  }
  md +=
      "\nThe handoff time is the server's `handoff_seconds` (prefill worker: header sent until the decode worker's "
      "ack). It is NOT wire time: it includes the decode worker's import of the rows and its probe verification, "
      "and, because rows are streamed while the prompt is still being prefilled, the prefill compute itself "
      "(\"handoff - prefill\" is the part beyond it). The handoff bandwidth (analytic latent + index-key bytes per "
      "request / handoff p50) is therefore a loose lower bound on the transport's bandwidth; read it beside the "
      "memcpy line above. ITL is the gap between token chunks divided by the tokens in the later chunk; tokens "
      "that came with the first chunk have no gap and are left out of it.\n";
  return md;
}

absl::Status Main(const std::vector<std::string>& argv) {
  ASSIGN_OR_RETURN(cli::Args args,
                   cli::Args::Parse(std::vector<std::string>(argv.begin() + 1, argv.end()),
                                    {"model", "transports", "concurrency", "duration", "prompt-len", "max-new-tokens",
                                     "threads", "json", "markdown"},
                                    {"help"}));
  if (args.Has("help")) {
    std::cout << kUsage;
    return absl::OkStatus();
  }
  Options o;
  o.model = args.Get("model").value_or(std::string(INDEXCACHE_MODELS_DIR) + "/glm-dsa-trained");
  o.transports = absl::StrSplit(args.Get("transports").value_or("grpc,tcp"), ',', absl::SkipEmpty());
  ASSIGN_OR_RETURN(auto concurrency, args.GetInt("concurrency"));
  ASSIGN_OR_RETURN(auto duration, args.GetDouble("duration"));
  ASSIGN_OR_RETURN(auto prompt_len, args.GetInt("prompt-len"));
  ASSIGN_OR_RETURN(auto max_new, args.GetInt("max-new-tokens"));
  ASSIGN_OR_RETURN(auto threads, args.GetInt("threads"));
  o.concurrency = static_cast<int>(concurrency.value_or(8));
  o.duration = duration.value_or(10);
  o.prompt_len = static_cast<int>(prompt_len.value_or(256));
  o.max_new_tokens = static_cast<int>(max_new.value_or(32));
  o.threads = static_cast<int>(threads.value_or(1));
  o.json_path = args.Get("json").value_or("");
  o.markdown_path = args.Get("markdown").value_or("");
  if (o.concurrency < 1 || o.duration <= 0 || o.prompt_len < 1 || o.max_new_tokens < 1 || o.threads < 1) {
    return absl::InvalidArgumentError("--concurrency, --duration, --prompt-len, --max-new-tokens, --threads must be positive");
  }
  ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(o.model));

  // One thread's copy of 64 MiB: the rate one connection's copies can reach.
  const double memcpy_bps = static_cast<double>(size_t{64} << 20) / TimeCopy(size_t{64} << 20, 1, 0.0).median;
  const RunInfo machine = ProbeMachine();
  nlohmann::json report = {{"date", machine.date},
                           {"cpu_model", machine.cpu_model},
                           {"logical_cores", machine.logical_cores},
                           {"command", absl::StrJoin(argv, " ")},
                           {"model", o.model},
                           {"concurrency", o.concurrency},
                           {"duration_seconds", o.duration},
                           {"prompt_len", o.prompt_len},
                           {"max_new_tokens", o.max_new_tokens},
                           {"worker_threads", o.threads},
                           {"memcpy_copy_bytes_per_second", memcpy_bps},
                           {"handoff_note", "handoff_seconds includes the decode worker's import and verification and "
                                            "overlaps the prefill compute; it is not wire time"},
                           {"results", nlohmann::json::array()}};
  for (const std::string& transport : o.transports) {
    auto r = RunTransport(o, transport, config.vocab_size);
    if (!r.ok()) return Annotate(r.status(), "transport " + transport);
    report["results"].push_back(ResultJson(*r, config, memcpy_bps));
  }
  const std::string md = Markdown(report);
  std::cout << md;
  if (!o.json_path.empty()) std::ofstream(o.json_path) << report.dump(2) << "\n";
  if (!o.markdown_path.empty()) std::ofstream(o.markdown_path) << md;
  return absl::OkStatus();
}

}  // namespace
}  // namespace indexcache::bench

int main(int argc, char** argv) {
  const absl::Status status = indexcache::bench::Main(std::vector<std::string>(argv, argv + argc));
  if (!status.ok()) {
    std::cerr << "indexcache_serving_bench: " << status << "\n";
    return 1;
  }
  return 0;
}
