// An adaptive IndexCache pattern (--length-patterns) against one pattern for every prompt, side by
// side in one run (docs/performance.md). The workload mixes short and long prompts, all submitted at
// once and stepped to the end through the public Engine API, so short and long requests share forward
// passes. Arms, in turn repetition by repetition (a neighbour's load on the shared machine falls on
// all alike):
//   all-Full   every prompt runs --base (the quality reference);
//   sparse     every prompt runs --long-pattern;
//   adaptive   prompts of at least --threshold tokens run --long-pattern, the others --base;
//   separate   the short prompts alone on the all-Full engine, then the long ones alone on the sparse
//              engine: what the adaptive arm's requests cost without sharing passes (the sum of both).
// Per arm: wall seconds (median, and the paired change against all-Full), each class's mean time to
// first token, and the engine's indexer runs (exact: a row runs the indexer once per Full layer of its
// own pattern) and indexer seconds.
#include <cstdio>
#include <map>
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
    "usage: adaptive_pattern_bench --model DIR --base P --long-pattern P [--threshold T] [--short N]\n"
    "       [--short-len T] [--long N] [--long-len T] [--new G] [--reps R] [--threads N]\n"
    "       [--max-batch-tokens N] [--device cpu|cuda]\n";

enum class Which { kShort, kLong, kAll };

struct Workload {
  std::vector<std::vector<int32_t>> prompts;
  std::vector<bool> is_long;
  int32_t new_tokens = 0;
};

// One run of (part of) the workload.
struct RunResult {
  double seconds = 0.0;
  double short_ttft = 0.0;  // mean over the short prompts run, from the common submission
  double long_ttft = 0.0;
  uint64_t indexer_runs = 0;
  double indexer_seconds = 0.0;
};

absl::StatusOr<RunResult> RunOnce(Engine& engine, const Workload& w, Which which) {
  SamplingParams params;
  params.temperature = 0.0f;
  params.max_new_tokens = w.new_tokens;
  params.ignore_eos = true;
  engine.TakeStats();
  const double start = NowSeconds();
  std::map<RequestId, bool> waiting;  // requests without a first token yet → is_long
  for (size_t i = 0; i < w.prompts.size(); ++i) {
    if (which != Which::kAll && w.is_long[i] != (which == Which::kLong)) continue;
    ASSIGN_OR_RETURN(RequestId id, engine.Submit(w.prompts[i], params));
    waiting.emplace(id, w.is_long[i]);
  }
  RunResult r;
  int shorts = 0, longs = 0;
  while (engine.HasWork()) {
    ASSIGN_OR_RETURN(std::vector<TokenEvent> events, engine.Step());
    const double now = NowSeconds() - start;
    for (const TokenEvent& e : events) {
      if (e.finish == RequestFinish::kError) return e.error;
      auto it = waiting.find(e.request);
      if (it == waiting.end() || e.token < 0) continue;
      (it->second ? r.long_ttft : r.short_ttft) += now;
      ++(it->second ? longs : shorts);
      waiting.erase(it);
    }
  }
  r.seconds = NowSeconds() - start;
  if (shorts > 0) r.short_ttft /= shorts;
  if (longs > 0) r.long_ttft /= longs;
  const IndexCacheStats stats = engine.TakeStats();
  r.indexer_runs = stats.indexer_runs;
  r.indexer_seconds = stats.indexer_seconds;
  return r;
}

struct Arm {
  std::string name;
  std::vector<RunResult> runs;
};

double Median(const std::vector<RunResult>& runs, double RunResult::*field) {
  std::vector<double> values;
  for (const RunResult& r : runs) values.push_back(r.*field);
  return Summarize(values).median;
}

absl::Status Run(int argc, char** argv) {
  ASSIGN_OR_RETURN(cli::Args args, cli::Args::Parse(std::vector<std::string>(argv + 1, argv + argc),
                                                    {"model", "base", "long-pattern", "threshold", "short", "short-len",
                                                     "long", "long-len", "new", "reps", "threads",
                                                     "max-batch-tokens", "device"},
                                                    {}));
  ASSIGN_OR_RETURN(std::string model, args.Require("model"));
  ASSIGN_OR_RETURN(std::string base, args.Require("base"));
  ASSIGN_OR_RETURN(std::string long_pattern, args.Require("long-pattern"));
  ASSIGN_OR_RETURN(auto threshold, args.GetInt("threshold"));
  ASSIGN_OR_RETURN(auto shorts, args.GetInt("short"));
  ASSIGN_OR_RETURN(auto short_len, args.GetInt("short-len"));
  ASSIGN_OR_RETURN(auto longs, args.GetInt("long"));
  ASSIGN_OR_RETURN(auto long_len, args.GetInt("long-len"));
  ASSIGN_OR_RETURN(auto new_tokens, args.GetInt("new"));
  ASSIGN_OR_RETURN(auto reps, args.GetInt("reps"));
  ASSIGN_OR_RETURN(auto threads, args.GetInt("threads"));
  ASSIGN_OR_RETURN(auto batch_tokens, args.GetInt("max-batch-tokens"));
  const std::string device = args.Get("device").value_or("cpu");
  const int32_t short_tokens = static_cast<int32_t>(short_len.value_or(256));
  const int32_t long_tokens = static_cast<int32_t>(long_len.value_or(2048));
  const int32_t cut = static_cast<int32_t>(threshold.value_or(1024));
  if (short_tokens >= cut || long_tokens < cut) {
    return absl::InvalidArgumentError("--short-len must lie below --threshold and --long-len at or above it");
  }
  RunInfo info = ProbeMachine();
  const double started = NowSeconds();

  auto make_engine = [&](const std::string& pattern, const std::string& ranges) {
    EngineOptions o;
    o.model_dir = model;
    o.index_pattern = pattern;
    o.length_patterns = ranges;
    o.num_threads = static_cast<int>(threads.value_or(0));
    o.device = device;
    o.max_batch_tokens = static_cast<int32_t>(batch_tokens.value_or(DefaultMaxBatchTokens(device)));
    o.kv_cache_bytes = size_t{512} << 20;
    o.reuse_telemetry_rate = 0;
    o.prefix_cache = false;  // every repetition submits the same prompts
    return Engine::Create(o);
  };
  ASSIGN_OR_RETURN(std::unique_ptr<Engine> all_full, make_engine(base, ""));
  ASSIGN_OR_RETURN(std::unique_ptr<Engine> sparse, make_engine(long_pattern, ""));
  ASSIGN_OR_RETURN(std::unique_ptr<Engine> adaptive, make_engine(base, absl::StrFormat("%d:%s", cut, long_pattern)));

  Workload w;
  w.new_tokens = static_cast<int32_t>(new_tokens.value_or(8));
  const int32_t vocab = all_full->config().vocab_size;
  uint32_t seed = 1;
  for (int64_t i = 0; i < shorts.value_or(6); ++i) {
    w.prompts.push_back(RandomPrompt(short_tokens, vocab, seed++));
    w.is_long.push_back(false);
  }
  for (int64_t i = 0; i < longs.value_or(2); ++i) {
    w.prompts.push_back(RandomPrompt(long_tokens, vocab, seed++));
    w.is_long.push_back(true);
  }

  std::vector<Arm> arms = {{"all-Full (" + base + ")", {}},
                           {"sparse (" + long_pattern + ")", {}},
                           {absl::StrFormat("adaptive (from %d tokens)", cut), {}},
                           {"separate (short on all-Full, then long on sparse)", {}}};
  auto run_arm = [&](size_t a) -> absl::StatusOr<RunResult> {
    switch (a) {
      case 0:
        return RunOnce(*all_full, w, Which::kAll);
      case 1:
        return RunOnce(*sparse, w, Which::kAll);
      case 2:
        return RunOnce(*adaptive, w, Which::kAll);
      default: {
        ASSIGN_OR_RETURN(RunResult s, RunOnce(*all_full, w, Which::kShort));
        ASSIGN_OR_RETURN(RunResult l, RunOnce(*sparse, w, Which::kLong));
        // The long prompts start once the short ones are done.
        return RunResult{.seconds = s.seconds + l.seconds,
                         .short_ttft = s.short_ttft,
                         .long_ttft = s.seconds + l.long_ttft,
                         .indexer_runs = s.indexer_runs + l.indexer_runs,
                         .indexer_seconds = s.indexer_seconds + l.indexer_seconds};
      }
    }
  };
  // One untimed round (first touch of workspaces), then the timed repetitions, arms in turn.
  for (size_t a = 0; a < arms.size(); ++a) RETURN_IF_ERROR(run_arm(a).status());
  for (int64_t rep = 0; rep < reps.value_or(3); ++rep) {
    for (size_t a = 0; a < arms.size(); ++a) {
      ASSIGN_OR_RETURN(RunResult r, run_arm(a));
      arms[a].runs.push_back(r);
    }
    std::fprintf(stderr, "repetition %lld/%lld done (%.0f s)\n", static_cast<long long>(rep + 1),
                 static_cast<long long>(reps.value_or(3)), NowSeconds() - started);
  }
  info.load_after = LoadAverage();
  info.total_seconds = NowSeconds() - started;

  std::printf("# Adaptive IndexCache pattern: a mixed workload (%s backend)\n\n%s", device.c_str(),
              CommandAndMachineLines(info, argc, argv).c_str());
  std::printf("- model: %s; %lld prompts of %d tokens and %lld of %d, submitted at once, %d greedy tokens each; "
              "max_batch_tokens %d\n",
              model.c_str(), static_cast<long long>(shorts.value_or(6)), short_tokens,
              static_cast<long long>(longs.value_or(2)), long_tokens, w.new_tokens,
              static_cast<int>(batch_tokens.value_or(DefaultMaxBatchTokens(device))));
  std::printf("- %lld timed repetitions per arm, arms in turn; whole run %.0f s\n\n",
              static_cast<long long>(reps.value_or(3)), info.total_seconds);
  std::printf("| arm | median s | min s | vs all-Full, paired median | short TTFT s | long TTFT s | indexer runs | "
              "indexer s |\n");
  std::printf("|---|---|---|---|---|---|---|---|\n");
  for (const Arm& arm : arms) {
    std::vector<double> seconds, change;
    for (size_t i = 0; i < arm.runs.size(); ++i) {
      seconds.push_back(arm.runs[i].seconds);
      change.push_back(arms[0].runs[i].seconds / arm.runs[i].seconds - 1.0);
    }
    const Sample s = Summarize(seconds);
    std::printf("| %s | %.3f | %.3f | %+.1f%% | %.3f | %.3f | %llu | %.3f |\n", arm.name.c_str(), s.median, s.min,
                100.0 * Summarize(change).median, Median(arm.runs, &RunResult::short_ttft),
                Median(arm.runs, &RunResult::long_ttft), static_cast<unsigned long long>(arm.runs.front().indexer_runs),
                Median(arm.runs, &RunResult::indexer_seconds));
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace indexcache::bench

int main(int argc, char** argv) {
  return indexcache::bench::BenchMain("adaptive_pattern_bench", indexcache::bench::Run, argc, argv, indexcache::bench::kUsage);
}
