// Disaggregation's cost, measured side by side in one run (issue 12, item 5). For each case (a model
// and a prompt length) it times the engine's in-process prefill (a child process of this binary:
// `engine-prefill`, so its GPU memory is gone before the cluster starts) and then, on a router + 1
// prefill + 1 decode worker of the real `indexcache` binary (same device, same chunk, the chosen
// transport), the client's time to first token with the server's prefill_s / handoff_s and the
// handoff's bytes as the prefill worker's /metrics counts them (indexcache_handoff_bytes_total, read
// before and after each request), against the analytic bf16 bytes. In the same run: the loopback TCP
// ceiling and host memcpy rates, and bursts of concurrent requests (p50/p99 TTFT, failures and their
// messages). Report: --json and --markdown (ttft_report.h). bench/cluster/run_cluster_ttft.sh runs it.
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <latch>
#include <map>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "bench/cluster/engine_prefill.h"
#include "bench/cluster/loopback_tcp.h"
#include "bench/cluster/metrics_scrape.h"
#include "bench/cluster/ttft_report.h"
#include "bench/memory_copy.h"
#include "bench/run_info.h"
#include "bench/serving/local_cluster.h"
#include "bench/serving/timed_stream.h"
#include "common/model/model_config.h"
#include "common/util/status_macros.h"
#include "tools/indexcache/args.h"
#include "tools/indexcache/child_process.h"

namespace indexcache::bench {
namespace {

constexpr char kUsage[] =
    "usage: indexcache_cluster_ttft_bench --model LABEL=DIR ... (--case LABEL:TOKENS[:REPS[:WARMUPS]] ...)\n"
    "         [--burst LABEL:COUNT:TOKENS ...] [flags]\n"
    "  --model LABEL=DIR         a model the cases name (repeatable)\n"
    "  --kv-cache-mb LABEL=MB    KV cache per engine / worker for that model (repeatable; default 1024)\n"
    "  --case LABEL:TOKENS[:REPS[:WARMUPS]]  engine prefill and cluster TTFT at TOKENS (reps 3, warm-ups 1)\n"
    "  --burst LABEL:COUNT:TOKENS  COUNT concurrent requests of TOKENS on that model's cluster\n"
    "  --indexcache BIN          the `indexcache` CLI the cluster runs (default: this build's)\n"
    "  --device cpu|cuda         engine and workers (default cpu)\n"
    "  --max-batch-tokens N      prefill chunk of the engine and the workers (default 8192)\n"
    "  --transport grpc|tcp      handoff transport (default tcp)\n"
    "  --decode-arg ARG          one more argument for the decode worker (repeatable), e.g.\n"
    "                            --decode-arg --import-batch-mb=4\n"
    "  --threads N               engine threads (default: cores / 2)\n"
    "  --max-new-tokens N        tokens per cluster request (default 2; TTFT is the first)\n"
    "  --tcp-gib G  --tcp-write-mib M  --tcp-reps R   loopback TCP ceiling (default 4, 16, 3)\n"
    "  --start-timeout S  --request-timeout S         (default 900, 1800)\n"
    "  --device-name TEXT  --git-commit SHA  --command TEXT   recorded in the report\n"
    "  --json PATH  --markdown PATH\n"
    "The engine child: indexcache_cluster_ttft_bench engine-prefill --model DIR --case TOKENS:REPS:WARMUPS ...\n"
    "  --out FILE [--device D] [--max-batch-tokens N] [--kv-cache-mb MB] [--threads N]\n";

struct CaseSpec {
  std::string model;
  int32_t tokens = 0;
  int reps = 3;
  int warmups = 1;
};

struct BurstSpec {
  std::string model;
  int count = 0;
  int32_t tokens = 0;
};

struct Options {
  std::string binary;
  std::vector<std::pair<std::string, std::string>> models;  // label, dir, in the order given
  std::map<std::string, int> kv_cache_mb;
  std::vector<CaseSpec> cases;
  std::vector<BurstSpec> bursts;
  std::string device = "cpu";
  int max_batch_tokens = 8192;
  std::string transport = "tcp";
  int threads = 1;
  int max_new_tokens = 2;
  double tcp_gib = 4;
  int tcp_write_mib = 16;
  int tcp_reps = 3;
  std::vector<std::string> decode_args;
  absl::Duration start_timeout = absl::Seconds(900);
  absl::Duration request_timeout = absl::Seconds(1800);
};

absl::StatusOr<int64_t> ParseInt(const std::string& text, const std::string& what) {
  int64_t v = 0;
  if (!absl::SimpleAtoi(text, &v) || v < 0) return absl::InvalidArgumentError(absl::StrCat(what, ": bad number '", text, "'"));
  return v;
}

// "LABEL:TOKENS[:REPS[:WARMUPS]]"
absl::StatusOr<CaseSpec> ParseCase(const std::string& text) {
  std::vector<std::string> parts = absl::StrSplit(text, ':');
  if (parts.size() < 2 || parts.size() > 4) return absl::InvalidArgumentError("--case LABEL:TOKENS[:REPS[:WARMUPS]], got " + text);
  CaseSpec c;
  c.model = parts[0];
  ASSIGN_OR_RETURN(int64_t tokens, ParseInt(parts[1], "--case tokens"));
  c.tokens = static_cast<int32_t>(tokens);
  if (parts.size() > 2) {
    ASSIGN_OR_RETURN(int64_t reps, ParseInt(parts[2], "--case reps"));
    c.reps = static_cast<int>(reps);
  }
  if (parts.size() > 3) {
    ASSIGN_OR_RETURN(int64_t warmups, ParseInt(parts[3], "--case warm-ups"));
    c.warmups = static_cast<int>(warmups);
  }
  if (c.tokens < 1 || c.reps < 1) return absl::InvalidArgumentError("--case needs TOKENS >= 1 and REPS >= 1: " + text);
  return c;
}

absl::StatusOr<BurstSpec> ParseBurst(const std::string& text) {
  std::vector<std::string> parts = absl::StrSplit(text, ':');
  if (parts.size() != 3) return absl::InvalidArgumentError("--burst LABEL:COUNT:TOKENS, got " + text);
  BurstSpec b;
  b.model = parts[0];
  ASSIGN_OR_RETURN(int64_t count, ParseInt(parts[1], "--burst count"));
  ASSIGN_OR_RETURN(int64_t tokens, ParseInt(parts[2], "--burst tokens"));
  b.count = static_cast<int>(count);
  b.tokens = static_cast<int32_t>(tokens);
  if (b.count < 1 || b.tokens < 1) return absl::InvalidArgumentError("--burst needs COUNT and TOKENS >= 1: " + text);
  return b;
}

std::string SelfPath() {
  char path[4096];
  const ssize_t n = readlink("/proc/self/exe", path, sizeof(path) - 1);
  return n > 0 ? std::string(path, static_cast<size_t>(n)) : "indexcache_cluster_ttft_bench";
}

// ---- the handoff's bytes, from a worker's /metrics ----------------------------------------------

struct HandoffBytes {
  double kv = 0, index_keys = 0, metadata = 0;
  double send_seconds = 0;  // the prefill worker's time sealing and writing chunks (0 on the decode side)
  double total() const { return kv + index_keys + metadata; }
  HandoffBytes operator-(const HandoffBytes& o) const {
    return {kv - o.kv, index_keys - o.index_keys, metadata - o.metadata, send_seconds - o.send_seconds};
  }
};

nlohmann::json BytesJson(const HandoffBytes& b) {
  return {{"kv", static_cast<int64_t>(b.kv)},
          {"index_keys", static_cast<int64_t>(b.index_keys)},
          {"metadata", static_cast<int64_t>(b.metadata)},
          {"send_seconds", b.send_seconds}};
}

// indexcache_handoff_bytes_total of one worker for `transport` (prefill: sent; decode: received).
absl::StatusOr<HandoffBytes> ScrapeHandoffBytes(const std::string& address, const std::string& transport) {
  if (address.empty()) return absl::FailedPreconditionError("the worker serves no /metrics");
  ASSIGN_OR_RETURN(std::string text, HttpGet(address, "/metrics"));
  const std::string t = absl::StrCat("transport=\"", transport, "\"");
  auto sum = [&](const char* payload) {
    return SumSamples(text, "indexcache_handoff_bytes_total", {absl::StrCat("payload=\"", payload, "\""), t});
  };
  return HandoffBytes{sum("kv"), sum("index_keys"), sum("metadata"),
                      SumSamples(text, "indexcache_handoff_send_seconds_total", {t})};
}

// Both workers' counters at one moment.
struct Counters {
  absl::StatusOr<HandoffBytes> sent, received;
};

Counters Scrape(const LocalCluster& cluster, const std::string& transport) {
  return {ScrapeHandoffBytes(cluster.prefill_metrics(), transport),
          ScrapeHandoffBytes(cluster.decode_metrics(), transport)};
}

// Adds "sent" / "received" deltas (or why not) to `out`.
void AddDeltas(const Counters& before, const Counters& after, nlohmann::json& out) {
  auto delta = [](const absl::StatusOr<HandoffBytes>& a, const absl::StatusOr<HandoffBytes>& b) -> nlohmann::json {
    if (!a.ok()) return {{"error", a.status().ToString()}};
    if (!b.ok()) return {{"error", b.status().ToString()}};
    return BytesJson(*b - *a);
  };
  out["sent_bytes"] = delta(before.sent, after.sent);
  out["received_bytes"] = delta(before.received, after.received);
}

// The bf16 rows a handoff must carry: the latent row of every layer, the index key of Full layers.
nlohmann::json ExpectedBytes(const ModelConfig& c, int64_t tokens) {
  const int64_t kv = tokens * c.num_layers * c.latent_cache_dim() * 2;
  const int64_t index_keys = tokens * c.num_full_layers() * c.index_head_dim * 2;
  return {{"kv", kv}, {"index_keys", index_keys}, {"total", kv + index_keys}};
}

// ---- the engine child -------------------------------------------------------------------------

absl::Status EngineChildMain(const std::vector<std::string>& argv) {
  ASSIGN_OR_RETURN(cli::Args args, cli::Args::Parse(argv, {"model", "case", "out", "device", "max-batch-tokens",
                                                           "kv-cache-mb", "threads"},
                                                    {}));
  EngineOptions options;
  ASSIGN_OR_RETURN(options.model_dir, args.Require("model"));
  ASSIGN_OR_RETURN(std::string out_path, args.Require("out"));
  options.device = args.Get("device").value_or("cpu");
  ASSIGN_OR_RETURN(auto batch, args.GetInt("max-batch-tokens"));
  ASSIGN_OR_RETURN(auto kv_mb, args.GetInt("kv-cache-mb"));
  ASSIGN_OR_RETURN(auto threads, args.GetInt("threads"));
  if (batch) options.max_batch_tokens = static_cast<int32_t>(*batch);
  if (kv_mb) options.kv_cache_bytes = static_cast<size_t>(*kv_mb) << 20;
  if (threads) options.num_threads = static_cast<int>(*threads);
  std::vector<PrefillCase> cases;
  for (const std::string& text : args.GetAll("case")) {
    ASSIGN_OR_RETURN(CaseSpec c, ParseCase("engine:" + text));
    cases.push_back({c.tokens, c.reps, c.warmups});
  }
  const nlohmann::json result = MeasureEnginePrefill(options, cases);
  std::ofstream(out_path) << result.dump(1) << "\n";
  return absl::OkStatus();
}

// Runs `engine-prefill` for `model`'s cases as a child process; its JSON, or why none came.
nlohmann::json RunEngineChild(const Options& o, const std::string& label, const std::string& dir,
                              const std::string& out_stem) {
  const std::string out_path = absl::StrCat(out_stem, "-engine-", label, ".json");
  std::vector<std::string> argv = {SelfPath(), "engine-prefill", "--model", dir, "--out", out_path,
                                   "--device", o.device, "--max-batch-tokens", std::to_string(o.max_batch_tokens),
                                   "--kv-cache-mb", std::to_string(o.kv_cache_mb.contains(label) ? o.kv_cache_mb.at(label) : 1024),
                                   "--threads", std::to_string(o.threads)};
  for (const CaseSpec& c : o.cases) {
    if (c.model == label) argv.push_back("--case"), argv.push_back(absl::StrCat(c.tokens, ":", c.reps, ":", c.warmups));
  }
  std::remove(out_path.c_str());
  std::cerr << "engine prefill of " << label << ": " << absl::StrJoin(argv, " ") << "\n";
  absl::StatusOr<std::unique_ptr<cli::ChildProcess>> child = cli::ChildProcess::Spawn("engine-" + label, argv);
  if (!child.ok()) return {{"error", child.status().ToString()}};
  const std::string exit = (*child)->Stop(o.request_timeout);
  std::ifstream in(out_path);
  nlohmann::json result = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (result.is_discarded()) return {{"error", "the engine child wrote no result (" + exit + ")"}};
  result["command"] = absl::StrJoin(argv, " ");
  return result;
}

// ---- the cluster ------------------------------------------------------------------------------

nlohmann::json RunClusterCase(const Options& o, const LocalCluster& cluster, const ModelConfig& config,
                              const CaseSpec& c, uint32_t& seed) {
  nlohmann::json out = {{"warmups", c.warmups}, {"reps", nlohmann::json::array()}};
  for (int i = 0; i < c.warmups + c.reps; ++i) {
    const Counters before = Scrape(cluster, o.transport);
    const TimedStream t = TimeStream(cluster.client(), RandomRequest(seed++, c.tokens, o.max_new_tokens, config.vocab_size));
    const Counters after = Scrape(cluster, o.transport);
    nlohmann::json rep = {{"warmup", i < c.warmups}, {"ttft_s", t.ttft}, {"total_s", t.total}};
    if (!t.status.ok()) rep["error"] = t.status.ToString();
    if (t.final) {
      rep["prompt_tokens"] = t.final->prompt_tokens;
      rep["queue_s"] = t.final->timings.queue_seconds;
      rep["prefill_s"] = t.final->timings.prefill_seconds;
      rep["handoff_s"] = t.final->timings.handoff_seconds;
      rep["server_first_token_s"] = t.final->timings.first_token_seconds;
      rep["index_pattern"] = t.final->index_pattern;
    }
    AddDeltas(before, after, rep);
    std::cerr << "  " << (i < c.warmups ? "warm-up" : "rep") << " " << c.tokens << " tokens: TTFT " << t.ttft << " s"
              << (t.status.ok() ? "" : " FAILED: " + t.status.ToString()) << "\n";
    out["reps"].push_back(rep);
  }
  return out;
}

nlohmann::json RunBurst(const Options& o, const LocalCluster& cluster, const ModelConfig& config, const BurstSpec& b,
                        uint32_t& seed) {
  std::vector<TimedStream> results(static_cast<size_t>(b.count));
  std::vector<client::GenerateRequest> requests;
  for (int i = 0; i < b.count; ++i) requests.push_back(RandomRequest(seed++, b.tokens, o.max_new_tokens, config.vocab_size));
  const Counters before = Scrape(cluster, o.transport);
  std::latch go(b.count);
  const double start = NowSeconds();
  {
    std::vector<std::jthread> threads;
    for (int i = 0; i < b.count; ++i) {
      threads.emplace_back([&, i] {
        go.arrive_and_wait();
        results[static_cast<size_t>(i)] = TimeStream(cluster.client(), requests[static_cast<size_t>(i)]);
      });
    }
  }
  const double wall = NowSeconds() - start;
  const Counters after = Scrape(cluster, o.transport);
  std::vector<double> ttft;
  std::map<std::string, int> errors;
  for (const TimedStream& t : results) {
    if (t.status.ok()) {
      ttft.push_back(t.ttft);
    } else {
      ++errors[t.status.ToString()];
    }
  }
  nlohmann::json failures = nlohmann::json::array();
  for (const auto& [message, count] : errors) failures.push_back({{"message", message}, {"count", count}});
  nlohmann::json out = {{"count", b.count},
                        {"prompt_tokens", b.tokens},
                        {"completed", ttft.size()},
                        {"failed", b.count - static_cast<int>(ttft.size())},
                        {"failures", failures},
                        {"ttft_p50_s", Percentile(ttft, 50)},
                        {"ttft_p99_s", Percentile(ttft, 99)},
                        {"ttft_max_s", Percentile(ttft, 100)},
                        {"wall_s", wall},
                        {"expected_bytes_per_request", ExpectedBytes(config, b.tokens)}};
  AddDeltas(before, after, out);
  std::cerr << "  burst " << b.count << " x " << b.tokens << ": " << ttft.size() << " completed, p50 "
            << out["ttft_p50_s"].get<double>() << " s\n";
  return out;
}

// Engine, then cluster, for one model: its cases and bursts appended to the report.
void RunModel(const Options& o, const std::string& label, const std::string& dir, const std::string& out_stem,
              nlohmann::json& report) {
  const bool used = std::any_of(o.cases.begin(), o.cases.end(), [&](const CaseSpec& c) { return c.model == label; }) ||
                    std::any_of(o.bursts.begin(), o.bursts.end(), [&](const BurstSpec& b) { return b.model == label; });
  if (!used) return;
  nlohmann::json model = {{"label", label}, {"dir", dir}};
  absl::StatusOr<ModelConfig> config = LoadModelConfig(dir);
  if (!config.ok()) {
    model["error"] = config.status().ToString();
    report["models"].push_back(model);
    return;
  }
  const int kv_mb = o.kv_cache_mb.contains(label) ? o.kv_cache_mb.at(label) : 1024;
  model.update({{"num_layers", config->num_layers},
                {"num_full_layers", config->num_full_layers()},
                {"latent_cache_dim", config->latent_cache_dim()},
                {"index_head_dim", config->index_head_dim},
                {"kv_cache_mb", kv_mb}});

  const nlohmann::json engine = RunEngineChild(o, label, dir, out_stem);
  model["engine"] = engine;

  LocalClusterOptions co;
  co.binary = o.binary;
  co.model = dir;
  co.transport = o.transport;
  co.device = o.device;
  co.threads = o.threads;
  co.kv_cache_mb = kv_mb;
  co.decode_args = o.decode_args;
  co.max_batch_tokens = o.max_batch_tokens;
  co.serve_metrics = true;
  co.start_timeout = o.start_timeout;
  co.request_timeout = o.request_timeout;
  std::cerr << "starting the cluster for " << label << "\n";
  absl::StatusOr<std::unique_ptr<LocalCluster>> cluster = LocalCluster::Start(co);
  if (!cluster.ok()) model["cluster_error"] = cluster.status().ToString();
  if (cluster.ok()) model["cluster_commands"] = (*cluster)->command_lines();

  uint32_t seed = 1000;
  int engine_index = 0;
  for (const CaseSpec& c : o.cases) {
    if (c.model != label) continue;
    nlohmann::json row = {{"model", label}, {"prompt_tokens", c.tokens}, {"expected_bytes", ExpectedBytes(*config, c.tokens)}};
    const nlohmann::json& engine_cases = engine.contains("cases") ? engine["cases"] : nlohmann::json::array();
    row["engine"] = engine_index < static_cast<int>(engine_cases.size())
                        ? engine_cases[static_cast<size_t>(engine_index)]
                        : nlohmann::json{{"error", engine.value("error", "no engine result")}};
    ++engine_index;
    if (cluster.ok()) {
      std::cerr << "cluster case " << label << " " << c.tokens << " tokens\n";
      row["cluster"] = RunClusterCase(o, **cluster, *config, c, seed);
    } else {
      row["cluster"] = {{"error", cluster.status().ToString()}};
    }
    report["cases"].push_back(row);
  }
  for (const BurstSpec& b : o.bursts) {
    if (b.model != label) continue;
    nlohmann::json row = {{"model", label}};
    if (cluster.ok()) {
      row.update(RunBurst(o, **cluster, *config, b, seed));
    } else {
      row.update({{"count", b.count}, {"prompt_tokens", b.tokens}, {"error", cluster.status().ToString()}});
    }
    report["bursts"].push_back(row);
  }
  report["models"].push_back(model);
}

nlohmann::json Ceilings(const Options& o) {
  nlohmann::json out;
  std::cerr << "loopback TCP ceiling (" << o.tcp_gib << " GiB)\n";
  auto tcp = MeasureLoopbackTcp(static_cast<uint64_t>(o.tcp_gib * (uint64_t{1} << 30)),
                                static_cast<size_t>(o.tcp_write_mib) << 20, o.tcp_reps);
  if (tcp.ok()) {
    out["loopback_tcp"] = {{"bytes", tcp->bytes},
                           {"write_bytes", tcp->write_bytes},
                           {"reps", tcp->seconds.reps},
                           {"seconds_median", tcp->seconds.median},
                           {"seconds_min", tcp->seconds.min},
                           {"seconds_max", tcp->seconds.max},
                           {"bytes_per_second", tcp->bytes_per_second}};
  } else {
    out["loopback_tcp"] = {{"error", tcp.status().ToString()}};
  }
  // 1 GiB: past every cache. Copy rate = bytes copied per second (memory traffic is twice that).
  const size_t bytes = size_t{1} << 30;
  const Sample one = TimeCopy(bytes, 1, 0.0);
  const int threads = static_cast<int>(sysconf(_SC_NPROCESSORS_ONLN));
  const Sample all = TimeCopy(bytes, threads, 0.0);
  out["memcpy"] = {{"bytes", bytes},
                   {"one_thread_copy_bytes_per_second", static_cast<double>(bytes) / one.median},
                   {"threads", threads},
                   {"all_threads_copy_bytes_per_second", static_cast<double>(bytes) / all.median}};
  return out;
}

absl::Status Main(const std::vector<std::string>& argv) {
  if (argv.size() > 1 && argv[1] == "engine-prefill") {
    return EngineChildMain(std::vector<std::string>(argv.begin() + 2, argv.end()));
  }
  ASSIGN_OR_RETURN(cli::Args args,
                   cli::Args::Parse(std::vector<std::string>(argv.begin() + 1, argv.end()),
                                    {"model", "kv-cache-mb", "case", "burst", "indexcache", "device", "max-batch-tokens",
                                     "transport", "threads", "max-new-tokens", "tcp-gib", "tcp-write-mib", "tcp-reps",
                                     "start-timeout", "request-timeout", "device-name", "git-commit", "command", "json",
                                     "markdown", "decode-arg"},
                                    {"help"}));
  if (args.Has("help")) {
    std::cout << kUsage;
    return absl::OkStatus();
  }
  Options o;
  o.binary = args.Get("indexcache").value_or(INDEXCACHE_CLI_BINARY);
  for (const std::string& m : args.GetAll("model")) {
    const size_t eq = m.find('=');
    if (eq == std::string::npos) return absl::InvalidArgumentError("--model LABEL=DIR, got " + m);
    o.models.emplace_back(m.substr(0, eq), m.substr(eq + 1));
  }
  for (const std::string& m : args.GetAll("kv-cache-mb")) {
    const size_t eq = m.find('=');
    if (eq == std::string::npos) return absl::InvalidArgumentError("--kv-cache-mb LABEL=MB, got " + m);
    ASSIGN_OR_RETURN(int64_t mb, ParseInt(m.substr(eq + 1), "--kv-cache-mb"));
    o.kv_cache_mb[m.substr(0, eq)] = static_cast<int>(mb);
  }
  for (const std::string& c : args.GetAll("case")) {
    ASSIGN_OR_RETURN(CaseSpec spec, ParseCase(c));
    o.cases.push_back(spec);
  }
  for (const std::string& b : args.GetAll("burst")) {
    ASSIGN_OR_RETURN(BurstSpec spec, ParseBurst(b));
    o.bursts.push_back(spec);
  }
  auto known = [&](const std::string& label) {
    return std::any_of(o.models.begin(), o.models.end(), [&](const auto& m) { return m.first == label; });
  };
  for (const CaseSpec& c : o.cases) {
    if (!known(c.model)) return absl::InvalidArgumentError("--case names an unknown model: " + c.model);
  }
  for (const BurstSpec& b : o.bursts) {
    if (!known(b.model)) return absl::InvalidArgumentError("--burst names an unknown model: " + b.model);
  }
  if (o.cases.empty() && o.bursts.empty()) return absl::InvalidArgumentError(std::string("no --case or --burst\n") + kUsage);
  o.device = args.Get("device").value_or("cpu");
  o.decode_args = args.GetAll("decode-arg");
  o.transport = args.Get("transport").value_or("tcp");
  ASSIGN_OR_RETURN(auto batch, args.GetInt("max-batch-tokens"));
  ASSIGN_OR_RETURN(auto threads, args.GetInt("threads"));
  ASSIGN_OR_RETURN(auto max_new, args.GetInt("max-new-tokens"));
  ASSIGN_OR_RETURN(auto tcp_gib, args.GetDouble("tcp-gib"));
  ASSIGN_OR_RETURN(auto tcp_write, args.GetInt("tcp-write-mib"));
  ASSIGN_OR_RETURN(auto tcp_reps, args.GetInt("tcp-reps"));
  ASSIGN_OR_RETURN(auto start_timeout, args.GetDouble("start-timeout"));
  ASSIGN_OR_RETURN(auto request_timeout, args.GetDouble("request-timeout"));
  o.max_batch_tokens = static_cast<int>(batch.value_or(8192));
  o.threads = static_cast<int>(threads.value_or(std::max(1L, sysconf(_SC_NPROCESSORS_ONLN) / 2)));
  o.max_new_tokens = static_cast<int>(max_new.value_or(2));
  o.tcp_gib = tcp_gib.value_or(4.0);
  o.tcp_write_mib = static_cast<int>(tcp_write.value_or(16));
  o.tcp_reps = static_cast<int>(tcp_reps.value_or(3));
  o.start_timeout = absl::Seconds(start_timeout.value_or(900));
  o.request_timeout = absl::Seconds(request_timeout.value_or(1800));
  if (o.max_batch_tokens < 1 || o.threads < 1 || o.max_new_tokens < 1 || o.tcp_gib <= 0 || o.tcp_write_mib < 1 ||
      o.tcp_reps < 1) {
    return absl::InvalidArgumentError("--max-batch-tokens, --threads, --max-new-tokens and the --tcp-* flags must be positive");
  }
  const std::string json_path = args.Get("json").value_or("");
  const std::string md_path = args.Get("markdown").value_or("");
  // The engine child's raw result goes beside the report: <json path without .json>-engine-<label>.json.
  const std::string out_stem = json_path.empty()                ? "cluster-ttft"
                               : json_path.ends_with(".json") ? json_path.substr(0, json_path.size() - 5)
                                                              : json_path;

  RunInfo machine = ProbeMachine();
  const double start = NowSeconds();
  nlohmann::json report = {{"date", machine.date},
                           {"device_name", args.Get("device-name").value_or(machine.cpu_model)},
                           {"cpu_model", machine.cpu_model},
                           {"logical_cores", machine.logical_cores},
                           {"load_before", machine.load_before},
                           {"git_commit", args.Get("git-commit").value_or("unknown")},
                           {"command", args.Get("command").value_or(absl::StrJoin(argv, " "))},
                           {"driver_command", absl::StrJoin(argv, " ")},
                           {"device", o.device},
                           {"transport", o.transport},
                           {"max_batch_tokens", o.max_batch_tokens},
                           {"threads", o.threads},
                           {"max_new_tokens", o.max_new_tokens},
                           {"models", nlohmann::json::array()},
                           {"cases", nlohmann::json::array()},
                           {"bursts", nlohmann::json::array()}};
  report["ceilings"] = Ceilings(o);
  for (const auto& [label, dir] : o.models) RunModel(o, label, dir, out_stem, report);
  report["load_after"] = LoadAverage();
  report["total_s"] = NowSeconds() - start;

  SummarizeCases(report);
  const std::string md = TtftMarkdown(report);
  std::cout << md;
  if (!json_path.empty()) std::ofstream(json_path) << report.dump(1) << "\n";
  if (!md_path.empty()) std::ofstream(md_path) << md;
  return absl::OkStatus();
}

}  // namespace
}  // namespace indexcache::bench

int main(int argc, char** argv) {
  const absl::Status status = indexcache::bench::Main(std::vector<std::string>(argv, argv + argc));
  if (!status.ok()) {
    std::cerr << "indexcache_cluster_ttft_bench: " << status << "\n";
    return 1;
  }
  return 0;
}
