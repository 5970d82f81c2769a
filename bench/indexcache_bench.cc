// indexcache_bench: the CPU benchmark. In one process, side by side: the BLAS's sgemm rate at the
// model's shapes, a memory copy and an OpenMP fork/join (the machine's ceilings), then prefill and
// decode through the Engine with every layer Full and with IndexCache patterns. Writes a JSON report
// and a markdown one (bench_report.h). bench/run_cpu_bench.sh runs it on the bundled model.
#include <omp.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "bench/bench_main.h"
#include "bench/bench_report.h"
#include "bench/engine_runs.h"
#include "bench/machine_ceilings.h"
#include "common/model/model_config.h"
#include "common/util/status_macros.h"

namespace indexcache::bench {
namespace {

constexpr char kUsage[] =
    "usage: indexcache_bench --model DIR [--json OUT.json] [--markdown OUT.md] [flags]\n"
    "  --prefill-lengths 128,512,2048,4096   prompt lengths timed to the first token\n"
    "  --prefill-reps 3                      timed repetitions per length (x3 for one-chunk prompts)\n"
    "  --decode-contexts 1024,4096           prompt lengths decode runs at\n"
    "  --decode-batches 1,8                  sequences per decode step\n"
    "  --decode-steps 24 --decode-warmup 4   timed / untimed steps per (batch, context)\n"
    "  --index-freqs 4                       IndexCache patterns compared with all-Full\n"
    "  --gemm-tokens 1,64,256,512,2048       token counts of the projection-shaped sgemm ceilings\n"
    "  --gemm-budget-s 0.3                   seconds per sgemm shape\n"
    "  --gemm-square 2048                    size of the square sgemm (0: skip it)\n"
    "  --threads 0                           OpenMP threads (0: all cores)\n"
    "  --max-batch-tokens 512                engine prefill chunk\n"
    "  --git-commit SHA                      recorded in the report\n";

class Flags {
 public:
  static absl::StatusOr<Flags> Parse(int argc, char** argv) {
    Flags f;
    for (int i = 1; i < argc; ++i) {
      std::string arg = argv[i];
      if (arg == "--help") {
        f.values_.emplace("help", "1");  // not operator=: GCC 12 warns falsely (-Wrestrict) on it
        continue;
      }
      if (arg.rfind("--", 0) != 0) return absl::InvalidArgumentError("unexpected argument '" + arg + "'");
      arg = arg.substr(2);
      const size_t eq = arg.find('=');
      if (eq != std::string::npos) {
        f.values_[arg.substr(0, eq)] = arg.substr(eq + 1);
      } else if (i + 1 < argc) {
        f.values_[arg] = argv[++i];
      } else {
        return absl::InvalidArgumentError("flag --" + arg + " needs a value");
      }
    }
    return f;
  }

  bool Has(const std::string& name) const { return values_.contains(name); }
  std::string Get(const std::string& name, const std::string& fallback) const {
    auto it = values_.find(name);
    return it == values_.end() ? fallback : it->second;
  }
  absl::StatusOr<int> Int(const std::string& name, int fallback) const {
    if (!Has(name)) return fallback;
    int v = 0;
    if (!absl::SimpleAtoi(Get(name, ""), &v)) return absl::InvalidArgumentError("--" + name + " wants an integer");
    return v;
  }
  absl::StatusOr<double> Double(const std::string& name, double fallback) const {
    if (!Has(name)) return fallback;
    double v = 0;
    if (!absl::SimpleAtod(Get(name, ""), &v)) return absl::InvalidArgumentError("--" + name + " wants a number");
    return v;
  }
  // A comma-separated list of positive integers ("" = empty list).
  absl::StatusOr<std::vector<int32_t>> IntList(const std::string& name, const std::string& fallback) const {
    std::vector<int32_t> out;
    const std::string text = Get(name, fallback);
    if (text.empty()) return out;
    for (absl::string_view part : absl::StrSplit(text, ',')) {
      int32_t v = 0;
      if (!absl::SimpleAtoi(part, &v) || v < 1) {
        return absl::InvalidArgumentError("--" + name + " wants positive integers separated by commas");
      }
      out.push_back(v);
    }
    return out;
  }
  const std::map<std::string, std::string>& values() const { return values_; }

 private:
  std::map<std::string, std::string> values_;
};

absl::Status WriteFile(const std::string& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
  out.close();
  if (!out) return absl::UnavailableError("cannot write " + path);
  return absl::OkStatus();
}

absl::Status Run(int argc, char** argv) {
  ASSIGN_OR_RETURN(Flags flags, Flags::Parse(argc, argv));
  if (flags.Has("help")) {
    std::fputs(kUsage, stdout);
    return absl::OkStatus();
  }
  for (const auto& [name, value] : flags.values()) {
    static const char* kKnown[] = {
        "model",          "json",         "markdown",         "prefill-lengths", "prefill-reps", "decode-contexts",
        "decode-batches", "decode-steps", "decode-warmup",    "index-freqs",     "gemm-tokens",  "gemm-budget-s",
        "gemm-square",    "threads",      "max-batch-tokens", "git-commit"};
    if (std::find(std::begin(kKnown), std::end(kKnown), name) == std::end(kKnown)) {
      return absl::InvalidArgumentError("unknown flag --" + name + "\n" + kUsage);
    }
  }
  if (!flags.Has("model")) return absl::InvalidArgumentError(std::string("--model is required\n") + kUsage);

  RunInfo info = ProbeMachine();
  const double start = NowSeconds();
  std::vector<std::string> args(argv, argv + argc);
  info.command_line = absl::StrJoin(args, " ");
  info.git_commit = flags.Get("git-commit", "unknown");
  info.model_dir = flags.Get("model", "");

  EngineBenchOptions o;
  o.model_dir = info.model_dir;
  ASSIGN_OR_RETURN(o.threads, flags.Int("threads", 0));
  ASSIGN_OR_RETURN(o.max_batch_tokens, flags.Int("max-batch-tokens", 512));
  ASSIGN_OR_RETURN(o.prefill_lengths, flags.IntList("prefill-lengths", "128,512,2048,4096"));
  ASSIGN_OR_RETURN(o.prefill_reps, flags.Int("prefill-reps", 3));
  ASSIGN_OR_RETURN(o.decode_contexts, flags.IntList("decode-contexts", "1024,4096"));
  ASSIGN_OR_RETURN(o.decode_batches, flags.IntList("decode-batches", "1,8"));
  ASSIGN_OR_RETURN(o.decode_steps, flags.Int("decode-steps", 24));
  ASSIGN_OR_RETURN(o.decode_warmup_steps, flags.Int("decode-warmup", 4));
  ASSIGN_OR_RETURN(std::vector<int32_t> freqs, flags.IntList("index-freqs", "4"));
  ASSIGN_OR_RETURN(std::vector<int32_t> gemm_tokens, flags.IntList("gemm-tokens", "1,64,256,512,2048"));
  ASSIGN_OR_RETURN(double gemm_budget, flags.Double("gemm-budget-s", 0.3));
  ASSIGN_OR_RETURN(int gemm_square, flags.Int("gemm-square", 2048));
  if (o.prefill_reps < 1 || o.decode_steps < 1 || o.decode_warmup_steps < 0) {
    return absl::InvalidArgumentError("repetition and step counts must be positive");
  }
  info.max_batch_tokens = o.max_batch_tokens;
  if (o.threads > 0) omp_set_num_threads(o.threads);

  ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(o.model_dir));
  const int32_t longest =
      o.prefill_lengths.empty() ? 4096 : *std::max_element(o.prefill_lengths.begin(), o.prefill_lengths.end());
  const std::vector<GemmShape> shapes =
      ModelGemmShapes(config.hidden_size, 4 * config.hidden_size, gemm_tokens,
                      o.max_batch_tokens * config.index_n_heads, longest, config.index_head_dim, gemm_square);
  std::fprintf(stderr, "measuring machine ceilings (%zu sgemm shapes, copy, fork/join)...\n", shapes.size());
  const MachineCeilings ceilings = MeasureCeilings(shapes, gemm_budget);

  std::vector<PatternSpec> specs = {{"all-Full", std::string(config.num_layers, 'F'), 0}};
  for (int32_t f : freqs) specs.push_back({absl::StrFormat("freq-%d", f), "", f});
  std::fprintf(stderr, "running prefill and decode on %zu patterns...\n", specs.size());
  ASSIGN_OR_RETURN(std::vector<PatternResults> results, RunPatterns(o, specs));
  // The report's weight total counts the baseline pattern's indexers.
  ASSIGN_OR_RETURN(config.indexer_types, ParseIndexPattern(results.front().layers, config.num_layers));

  info.load_after = LoadAverage();
  info.total_seconds = NowSeconds() - start;
  const std::string markdown = ReportMarkdown(info, ceilings, config, results);
  if (flags.Has("json")) {
    RETURN_IF_ERROR(WriteFile(flags.Get("json", ""), ReportJson(info, ceilings, config, results).dump(2) + "\n"));
  }
  if (flags.Has("markdown")) RETURN_IF_ERROR(WriteFile(flags.Get("markdown", ""), markdown));
  std::fputs(markdown.c_str(), stdout);
  return absl::OkStatus();
}

}  // namespace
}  // namespace indexcache::bench

int main(int argc, char** argv) {
  return indexcache::bench::BenchMain("indexcache_bench", indexcache::bench::Run, argc, argv);
}
