// `indexcache perplexity`: mean next-token negative log-likelihood of a text file, scored in
// independent windows of --context tokens (each window's first token has no prediction).
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "common/util/status_macros.h"
#include "tools/indexcache/commands.h"
#include "tools/indexcache/engine_flags.h"

namespace indexcache::cli {
namespace {

constexpr char kPerplexityUsage[] =
    "usage: indexcache perplexity --model DIR --text FILE [--context N] [flags]\n";

// -log softmax(logits)[target], computed stably in double.
double NegLogLikelihood(const float* logits, int32_t vocab, int32_t target) {
  double max_logit = logits[0];
  for (int32_t v = 1; v < vocab; ++v) max_logit = std::max<double>(max_logit, logits[v]);
  double sum = 0.0;
  for (int32_t v = 0; v < vocab; ++v) sum += std::exp(logits[v] - max_logit);
  return std::log(sum) + max_logit - logits[target];
}

absl::Status Perplexity(const Args& args) {
  ASSIGN_OR_RETURN(EngineOptions options, EngineOptionsFromArgs(args));
  ASSIGN_OR_RETURN(std::string path, args.Require("text"));
  ASSIGN_OR_RETURN(auto context_flag, args.GetInt("context"));
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::stringstream text;
  text << in.rdbuf();
  ASSIGN_OR_RETURN(std::unique_ptr<Engine> engine, Engine::Create(options));
  if (engine->tokenizer() == nullptr) return absl::FailedPreconditionError("perplexity needs the model's tokenizer.json");
  const std::vector<int32_t> ids = engine->tokenizer()->Encode(text.str());
  const int64_t context = context_flag.value_or(1024);
  if (context < 2) return absl::InvalidArgumentError("--context must be at least 2");
  if (ids.size() < 2) return absl::InvalidArgumentError(absl::StrCat(path, " holds fewer than 2 tokens"));
  const int32_t vocab = engine->config().vocab_size;
  double total_nll = 0.0;
  int64_t predicted = 0;
  for (size_t begin = 0; begin + 1 < ids.size(); begin += context) {
    const std::vector<int32_t> window(ids.begin() + begin, ids.begin() + std::min(ids.size(), begin + context));
    RETURN_IF_ERROR(engine->ScoreChunks(window, /*capture_topk=*/false, [&](int32_t chunk_begin, const ForwardResult& r) {
      const int64_t rows = static_cast<int64_t>(r.logits.size()) / vocab;
      for (int64_t i = 0; i < rows; ++i) {
        const size_t target = chunk_begin + i + 1;
        if (target >= window.size()) break;
        total_nll += NegLogLikelihood(r.logits.data() + i * vocab, vocab, window[target]);
        ++predicted;
      }
      return absl::OkStatus();
    }));
    std::fprintf(stderr, "\rscored %zu / %zu tokens", std::min(ids.size(), begin + context), ids.size());
  }
  std::fprintf(stderr, "\n");
  const double mean = total_nll / static_cast<double>(predicted);
  std::printf("tokens %lld mean_nll %.6f perplexity %.4f\n", static_cast<long long>(predicted), mean, std::exp(mean));
  return absl::OkStatus();
}

}  // namespace

int RunPerplexity(const std::vector<std::string>& argv) {
  std::set<std::string> valued = EngineFlagNames();
  valued.insert({"text", "context"});
  auto args = Args::Parse(argv, valued, {"help"});
  if (!args.ok()) return Fail("perplexity", std::string(args.status().message()) + "\n" + kPerplexityUsage);
  if (args->Has("help")) {
    std::cout << kPerplexityUsage << kEngineFlagsUsage;
    return 0;
  }
  absl::Status status = Perplexity(*args);
  if (!status.ok()) return Fail("perplexity", std::string(status.message()));
  return 0;
}

}  // namespace indexcache::cli
