// Engine throughput with reuse telemetry off, at the default rate and at rate 1, side by side in one
// run (docs/performance.md). A serving-like workload through the public Engine API: `requests` prompts
// of `prompt` random ids, each generating `new` greedy tokens, all submitted at once and stepped to
// the end; throughput = (prompt + generated tokens) / wall seconds. The three engines run in turn,
// repetition by repetition, so a neighbour's load on a shared machine falls on all three alike; each
// arm's change against "off" is the median over repetitions of the paired ratio (same repetition),
// beside the ratio of the fastest runs, with the passes telemetry measured; and the same paired median
// for the process's CPU seconds, which a neighbour's load delays far less than the wall clock (on a
// shared machine the wall clock cannot resolve 1%). Any backend (--device, default cpu).
#include <time.h>

#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "bench/bench_main.h"
#include "bench/prompts.h"
#include "bench/run_info.h"
#include "bench/timing.h"
#include "common/engine/engine.h"
#include "common/util/status_macros.h"
#include "tools/indexcache/args.h"

namespace indexcache::bench {
namespace {

constexpr char kUsage[] =
    "usage: reuse_telemetry_bench --model DIR [--index-pattern P] [--requests N] [--prompt T] [--new G]\n"
    "       [--reps R] [--threads N] [--max-batch-tokens N] [--device cpu|cuda]\n";

struct Arm {
  std::string name;
  double rate = 0.0;
  std::unique_ptr<Engine> engine;
  std::vector<double> seconds;
  std::vector<double> cpu_seconds;  // the whole process's, over the same runs
  uint64_t passes = 0;  // forward passes telemetry measured in, over the timed repetitions
};

double ProcessCpuSeconds() {
  timespec t{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
}

// The median over repetitions of off[i] / arm[i] - 1: the arm's change in throughput, paired.
double PairedChange(const std::vector<double>& off, const std::vector<double>& arm) {
  std::vector<double> change;
  for (size_t i = 0; i < arm.size(); ++i) change.push_back(off[i] / arm[i] - 1.0);
  return Summarize(change).median;
}

// Runs the workload once; returns its wall seconds.
absl::StatusOr<double> RunWorkload(Engine& engine, const std::vector<std::vector<int32_t>>& prompts, int32_t new_tokens) {
  SamplingParams params;
  params.temperature = 0.0f;
  params.max_new_tokens = new_tokens;
  params.ignore_eos = true;
  const double start = NowSeconds();
  for (const auto& prompt : prompts) RETURN_IF_ERROR(engine.Submit(prompt, params).status());
  while (engine.HasWork()) RETURN_IF_ERROR(engine.Step().status());
  return NowSeconds() - start;
}

absl::Status Run(int argc, char** argv) {
  ASSIGN_OR_RETURN(cli::Args args, cli::Args::Parse(std::vector<std::string>(argv + 1, argv + argc),
                                                    {"model", "index-pattern", "requests", "prompt", "new", "reps",
                                                     "threads", "max-batch-tokens", "device"},
                                                    {}));
  ASSIGN_OR_RETURN(std::string model, args.Require("model"));
  ASSIGN_OR_RETURN(auto requests, args.GetInt("requests"));
  ASSIGN_OR_RETURN(auto prompt_len, args.GetInt("prompt"));
  ASSIGN_OR_RETURN(auto new_tokens, args.GetInt("new"));
  ASSIGN_OR_RETURN(auto reps, args.GetInt("reps"));
  ASSIGN_OR_RETURN(auto threads, args.GetInt("threads"));
  ASSIGN_OR_RETURN(auto batch_tokens, args.GetInt("max-batch-tokens"));
  const std::string device = args.Get("device").value_or("cpu");
  RunInfo info = ProbeMachine();
  const double started = NowSeconds();

  std::vector<Arm> arms(3);
  arms[0].name = "off (rate 0)";
  arms[1].name = absl::StrFormat("default (rate %g)", kDefaultReuseTelemetryRate);
  arms[1].rate = kDefaultReuseTelemetryRate;
  arms[2].name = "every step (rate 1)";
  arms[2].rate = 1.0;
  for (Arm& arm : arms) {
    EngineOptions o;
    o.model_dir = model;
    o.index_pattern = args.Get("index-pattern").value_or("");
    o.num_threads = static_cast<int>(threads.value_or(0));
    o.device = device;
    o.max_batch_tokens = static_cast<int32_t>(batch_tokens.value_or(DefaultMaxBatchTokens(device)));
    o.kv_cache_bytes = size_t{512} << 20;
    o.reuse_telemetry_rate = arm.rate;
    // Every repetition submits the same prompts: with the prefix cache on, the later ones would find
    // them cached and compute (and measure) almost nothing.
    o.prefix_cache = false;
    ASSIGN_OR_RETURN(arm.engine, Engine::Create(o));
  }
  const int32_t vocab = arms[0].engine->config().vocab_size;
  std::vector<std::vector<int32_t>> prompts;
  for (int64_t i = 0; i < requests.value_or(32); ++i) {
    prompts.push_back(RandomPrompt(static_cast<int32_t>(prompt_len.value_or(256)), vocab, static_cast<uint32_t>(i + 1)));
  }
  const int32_t generated = static_cast<int32_t>(new_tokens.value_or(16));
  // One untimed run each (first-touch of workspaces and caches), then the timed repetitions in turn.
  for (Arm& arm : arms) {
    RETURN_IF_ERROR(RunWorkload(*arm.engine, prompts, generated).status());
    arm.engine->TakeStats();
  }
  for (int64_t rep = 0; rep < reps.value_or(5); ++rep) {
    for (Arm& arm : arms) {
      const double cpu_start = ProcessCpuSeconds();
      ASSIGN_OR_RETURN(double seconds, RunWorkload(*arm.engine, prompts, generated));
      arm.cpu_seconds.push_back(ProcessCpuSeconds() - cpu_start);
      arm.seconds.push_back(seconds);
      arm.passes += arm.engine->TakeStats().reuse_telemetry_passes;
    }
  }
  info.load_after = LoadAverage();
  info.total_seconds = NowSeconds() - started;

  const double tokens = static_cast<double>(prompts.size()) * (prompt_len.value_or(256) + generated);
  std::printf("# Reuse telemetry overhead (%s backend)\n\n%s", device.c_str(),
              CommandAndMachineLines(info, argc, argv).c_str());
  std::printf("- model: %s, pattern %s; %zu requests x (%lld prompt + %d new tokens), greedy, max_batch_tokens %d\n",
              model.c_str(), args.Get("index-pattern").value_or("(checkpoint's)").c_str(), prompts.size(),
              static_cast<long long>(prompt_len.value_or(256)), generated, static_cast<int>(batch_tokens.value_or(512)));
  std::printf("- %lld timed repetitions per arm, arms in turn; whole run %.0f s\n\n", static_cast<long long>(reps.value_or(5)),
              info.total_seconds);
  std::printf("| telemetry | median s | min s | max s | tokens/s (median) | throughput vs off, paired median | "
              "vs off, fastest runs | CPU s (median) | CPU throughput vs off, paired median | passes measured |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|\n");
  const Sample off = Summarize(arms[0].seconds);
  for (Arm& arm : arms) {
    const Sample s = Summarize(arm.seconds);
    std::printf("| %s | %.3f | %.3f | %.3f | %.1f | %+.2f%% | %+.2f%% | %.3f | %+.2f%% | %llu |\n", arm.name.c_str(),
                s.median, s.min, s.max, tokens / s.median, 100.0 * PairedChange(arms[0].seconds, arm.seconds),
                100.0 * (off.min / s.min - 1.0), Summarize(arm.cpu_seconds).median,
                100.0 * PairedChange(arms[0].cpu_seconds, arm.cpu_seconds), static_cast<unsigned long long>(arm.passes));
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace indexcache::bench

int main(int argc, char** argv) {
  return indexcache::bench::BenchMain("reuse_telemetry_bench", indexcache::bench::Run, argc, argv, indexcache::bench::kUsage);
}
