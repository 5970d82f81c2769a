// `indexcache search`: IndexCache's training-free layer selection (common/search) on a calibration
// file. Each step's loss goes to stdout as it completes, progress to stderr; the resulting pattern —
// the index_topk_pattern string --index-pattern, config.json and `cluster up` take — is the last stdout
// line and, with --out, the content of a file. With --length-ranges it searches once per prompt-length
// range of an adaptive pattern (common/model/pattern_schedule.h), each on windows as long as its
// range's shortest prompt, and the result is the --length-patterns value.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "common/search/greedy_layer_search.h"
#include "common/util/status_macros.h"
#include "tools/indexcache/args.h"
#include "tools/indexcache/commands.h"

namespace indexcache::cli {
namespace {

constexpr char kSearchUsage[] =
    "usage: indexcache search --model DIR --calibration FILE --keep N [--out FILE] [--context N] [flags]\n"
    "  --calibration FILE   UTF-8 text (tokenized with the model's tokenizer), or FILE.jsonl: one JSON\n"
    "                       array of token ids per line; cut into windows of --context tokens\n"
    "  --keep N             layers that keep their indexer at the end (1..layers; layer 0 is one)\n"
    "  --out FILE           also write the resulting pattern to FILE\n"
    "  --context N          tokens per calibration window (default 1024)\n"
    "  --length-ranges T,.. an adaptive pattern instead: one search per prompt-length range, the range\n"
    "                       from T tokens on scored on windows of T tokens (--context is then unused); the\n"
    "                       result is the --length-patterns value T:PATTERN,...\n"
    "  --retrieval FILE.jsonl  retrieval cases ({\"prompt\", \"answer\"} text or {\"prompt_ids\",\n"
    "                       \"answer_ids\"}) scored beside the windows: the loss becomes the windows' mean\n"
    "                       NLL + W x the answers' mean NLL (with --length-ranges, each range takes the\n"
    "                       cases no longer than its windows)\n"
    "  --retrieval-weight W the answers' weight W (default 1)\n"
    "  --model DIR          model directory; every layer needs its indexer weights\n"
    "  --device cpu|cuda    backend (default cpu)\n"
    "  --threads N          CPU threads (default: all cores)\n"
    "Prints `step S shared L loss X delta D pattern P` per step (stdout; with --length-ranges each\n"
    "range's steps follow a `range T` line), progress (stderr), and the final pattern (or\n"
    "--length-patterns value) alone as the last stdout line.\n";

std::string Duration(double seconds) {
  if (seconds < 60) return absl::StrFormat("%.1fs", seconds);
  const int64_t s = static_cast<int64_t>(seconds + 0.5);
  return s < 3600 ? absl::StrFormat("%dm%02ds", s / 60, s % 60) : absl::StrFormat("%dh%02dm", s / 3600, s / 60 % 60);
}

// The window lengths to search with: --length-ranges' thresholds (increasing, at least 2 tokens),
// else the one --context.
absl::StatusOr<std::vector<int32_t>> SearchContexts(const Args& args) {
  ASSIGN_OR_RETURN(auto context, args.GetInt("context"));
  if (context && (*context < 2 || *context > INT32_MAX)) {
    return absl::InvalidArgumentError(absl::StrCat("--context must be between 2 and ", INT32_MAX, ", got ", *context));
  }
  const std::optional<std::string> ranges = args.Get("length-ranges");
  if (!ranges) return std::vector<int32_t>{static_cast<int32_t>(context.value_or(1024))};
  std::vector<int32_t> thresholds;
  for (absl::string_view entry : absl::StrSplit(*ranges, ',')) {
    int32_t threshold = 0;
    if (!absl::SimpleAtoi(entry, &threshold) || threshold < 2 ||
        (!thresholds.empty() && threshold <= thresholds.back())) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--length-ranges takes increasing prompt lengths of at least 2 tokens (e.g. 1024,8192), got '", *ranges,
          "'"));
    }
    thresholds.push_back(threshold);
  }
  return thresholds;
}

// One greedy search, its steps to stdout and its progress to stderr; the pattern it ends with.
absl::StatusOr<std::string> SearchOne(PatternScorer& scorer, const CalibrationSet& calibration, int32_t keep) {
  const int32_t num_layers = scorer.config().num_layers;
  std::fprintf(stderr, "calibration: %zu windows, %zu retrieval cases, %lld predicted tokens; %d layers, keeping "
               "%d: %d steps\n",
               calibration.windows.size(), calibration.retrieval.size(),
               static_cast<long long>(calibration.predicted_tokens()), num_layers, keep, num_layers - keep);
  LayerSearchOptions options;
  options.keep = keep;
  double full_loss = 0.0;
  bool progress_shown = false;
  auto last_progress = std::chrono::steady_clock::time_point{};
  options.on_step = [&](const SearchStep& s) {
    if (s.step == 0) full_loss = s.loss;
    if (progress_shown) std::fputc('\n', stderr);
    progress_shown = false;
    std::printf("step %d shared %s loss %.6f delta %+.6f pattern %s\n", s.step,
                s.layer < 0 ? "-" : std::to_string(s.layer).c_str(), s.loss, s.loss - full_loss,
                FormatIndexPattern(s.pattern).c_str());
    std::fflush(stdout);
  };
  options.on_progress = [&](const SearchProgress& p) {
    const auto now = std::chrono::steady_clock::now();
    if (now - last_progress < std::chrono::milliseconds(500) && p.candidates_done < p.candidates_total) return;
    last_progress = now;
    progress_shown = true;
    std::fprintf(stderr, "\rstep %d/%d  window %d/%d  candidates evaluated %lld/%lld  elapsed %s  ETA %s   ", p.step,
                 p.num_steps, p.window, p.num_windows, static_cast<long long>(p.candidates_done),
                 static_cast<long long>(p.candidates_total), Duration(p.elapsed_seconds).c_str(),
                 Duration(p.eta_seconds).c_str());
  };
  ASSIGN_OR_RETURN(std::vector<SearchStep> path, GreedyLayerSearch(scorer, calibration, options));
  if (progress_shown) std::fputc('\n', stderr);
  return FormatIndexPattern(path.back().pattern);
}

absl::Status Search(const Args& args) {
  ASSIGN_OR_RETURN(std::string model_dir, args.Require("model"));
  ASSIGN_OR_RETURN(std::string calibration_path, args.Require("calibration"));
  ASSIGN_OR_RETURN(auto keep, args.GetInt("keep"));
  ASSIGN_OR_RETURN(auto threads, args.GetInt("threads"));
  ASSIGN_OR_RETURN(auto retrieval_weight, args.GetDouble("retrieval-weight"));
  if (!keep) return absl::InvalidArgumentError("--keep is required");
  if (retrieval_weight && !(*retrieval_weight >= 0 && std::isfinite(*retrieval_weight))) {
    return absl::InvalidArgumentError("--retrieval-weight must be a finite number >= 0");
  }
  if (retrieval_weight && !args.Has("retrieval")) {
    return absl::InvalidArgumentError("--retrieval-weight weighs --retrieval's cases: give the file too");
  }
  if (*keep < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--keep must be at least 1 (layer 0 always keeps its indexer), got ", *keep));
  }
  ASSIGN_OR_RETURN(const std::vector<int32_t> contexts, SearchContexts(args));

  ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(model_dir));
  if (*keep > config.num_layers) {
    return absl::InvalidArgumentError(
        absl::StrFormat("--keep %d exceeds the model's %d layers", *keep, config.num_layers));
  }
  // Open --out now: a bad path should fail before the search, not after it.
  std::ofstream out;
  if (args.Has("out")) {
    out.open(*args.Get("out"));
    if (!out) return absl::InvalidArgumentError(absl::StrCat("cannot write --out ", *args.Get("out")));
  }
  std::unique_ptr<BpeTokenizer> tokenizer;
  if (std::filesystem::exists(model_dir + "/tokenizer.json")) {
    ASSIGN_OR_RETURN(tokenizer, BpeTokenizer::FromFile(model_dir + "/tokenizer.json"));
  }
  std::vector<RetrievalCase> cases;
  if (args.Has("retrieval")) {
    ASSIGN_OR_RETURN(cases, LoadRetrievalCases(*args.Get("retrieval"), tokenizer.get(), config.vocab_size));
  }
  // Every range's windows before any search: a file too short for one fails before hours of work.
  std::vector<CalibrationSet> calibrations;
  int32_t longest_window = 0;
  for (int32_t context : contexts) {
    ASSIGN_OR_RETURN(CalibrationSet calibration,
                     LoadCalibrationSet(calibration_path, context, tokenizer.get(), config.vocab_size));
    calibration.retrieval_weight = retrieval_weight.value_or(1.0);
    for (const RetrievalCase& c : cases) {
      // A range scores the cases its windows could hold; a plain search every case.
      if (!args.Has("length-ranges") || static_cast<int64_t>(c.tokens.size()) <= context) {
        calibration.retrieval.push_back(c);
      }
    }
    if (!cases.empty() && calibration.retrieval.empty()) {
      return absl::InvalidArgumentError(
          absl::StrFormat("no retrieval case of --retrieval fits the %d-token windows of its range", context));
    }
    longest_window = std::max(longest_window, calibration.longest_window());
    calibrations.push_back(std::move(calibration));
  }

  PatternScorerOptions scorer_options;
  scorer_options.model_dir = model_dir;
  scorer_options.device = args.Get("device").value_or("cpu");
  scorer_options.num_threads = static_cast<int>(threads.value_or(0));
  scorer_options.longest_window = longest_window;
  ASSIGN_OR_RETURN(std::unique_ptr<PatternScorer> scorer, PatternScorer::Create(scorer_options));

  std::string result;
  if (!args.Has("length-ranges")) {
    ASSIGN_OR_RETURN(result, SearchOne(*scorer, calibrations.front(), static_cast<int32_t>(*keep)));
  } else {
    for (size_t i = 0; i < contexts.size(); ++i) {
      std::printf("range %d\n", contexts[i]);
      std::fprintf(stderr, "range from %d prompt tokens (%zu of %zu)\n", contexts[i], i + 1, contexts.size());
      ASSIGN_OR_RETURN(const std::string pattern, SearchOne(*scorer, calibrations[i], static_cast<int32_t>(*keep)));
      absl::StrAppend(&result, i > 0 ? "," : "", contexts[i], ":", pattern);
    }
  }
  if (out.is_open()) {
    out << result << "\n";
    out.close();
    if (!out) return absl::DataLossError(absl::StrCat("writing --out ", *args.Get("out"), " failed"));
  }
  std::printf("%s\n", result.c_str());
  return absl::OkStatus();
}

}  // namespace

int RunSearch(const std::vector<std::string>& argv) {
  auto args = Args::Parse(argv, {"model", "calibration", "keep", "out", "context", "length-ranges", "retrieval", "retrieval-weight",
                                 "device", "threads"}, {"help"});
  if (!args.ok()) return Fail("search", std::string(args.status().message()) + "\n" + kSearchUsage);
  if (args->Has("help")) {
    std::cout << kSearchUsage;
    return 0;
  }
  absl::Status status = Search(*args);
  if (!status.ok()) return Fail("search", std::string(status.message()));
  return 0;
}

}  // namespace indexcache::cli
