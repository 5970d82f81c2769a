// `indexcache score`: runs token ids as one prompt (chunked prefill) and writes the logits of every
// position and every layer's top-k selection — the contract golden tests compare against transformers.
#include <iostream>

#include "absl/strings/str_cat.h"
#include "common/safetensors/safetensors_writer.h"
#include "common/util/status_macros.h"
#include "tools/indexcache/commands.h"
#include "tools/indexcache/engine_flags.h"

namespace indexcache::cli {
namespace {

constexpr char kScoreUsage[] =
    "usage: indexcache score --model DIR --input-ids FILE.json --output OUT.safetensors [flags]\n"
    "writes logits F32 [T, vocab] and topk.<layer> I32 [T, min(index_topk, T)] (-1 padded)\n";

absl::Status Score(const Args& args) {
  ASSIGN_OR_RETURN(EngineOptions options, EngineOptionsFromArgs(args));
  ASSIGN_OR_RETURN(std::string ids_path, args.Require("input-ids"));
  ASSIGN_OR_RETURN(std::string output, args.Require("output"));
  ASSIGN_OR_RETURN(std::vector<int32_t> ids, ReadTokenIdsFile(ids_path));
  ASSIGN_OR_RETURN(std::unique_ptr<Engine> engine, Engine::Create(options));
  const ModelConfig& c = engine->config();
  const int64_t t = static_cast<int64_t>(ids.size());
  const int64_t k = std::min<int64_t>(c.index_topk, t);
  std::vector<float> logits(t * c.vocab_size);
  std::vector<std::vector<int32_t>> topk(c.num_layers, std::vector<int32_t>(t * k, -1));
  RETURN_IF_ERROR(engine->ScoreChunks(ids, /*capture_topk=*/true, [&](int32_t begin, const ForwardResult& r) {
    std::copy(r.logits.begin(), r.logits.end(), logits.begin() + begin * c.vocab_size);
    // A chunk's selections are r.topk_cols wide (its own context); rows are -1 padded to k.
    const int64_t rows = static_cast<int64_t>(r.logits.size()) / c.vocab_size;
    for (int32_t l = 0; l < c.num_layers; ++l) {
      for (int64_t i = 0; i < rows; ++i) {
        std::copy_n(r.topk[l].begin() + i * r.topk_cols, std::min<int64_t>(r.topk_cols, k),
                    topk[l].begin() + (begin + i) * k);
      }
    }
    return absl::OkStatus();
  }));
  std::vector<TensorToWrite> tensors;
  ASSIGN_OR_RETURN(TensorToWrite logits_tensor, MakeTensorFromF32("logits", {t, c.vocab_size}, logits, StDType::kF32));
  tensors.push_back(std::move(logits_tensor));
  for (int32_t l = 0; l < c.num_layers; ++l) {
    TensorToWrite tensor{absl::StrCat("topk.", l), StDType::kI32, {t, k}, std::vector<std::byte>(t * k * 4)};
    std::memcpy(tensor.bytes.data(), topk[l].data(), tensor.bytes.size());
    tensors.push_back(std::move(tensor));
  }
  return WriteSafetensors(output, tensors, {{"index_pattern", FormatIndexPattern(c.indexer_types)}});
}

}  // namespace

int RunScore(const std::vector<std::string>& argv) {
  std::set<std::string> valued = EngineFlagNames();
  valued.insert({"input-ids", "output"});
  auto args = Args::Parse(argv, valued, {"help"});
  if (!args.ok()) return Fail("score", std::string(args.status().message()) + "\n" + kScoreUsage);
  if (args->Has("help")) {
    std::cout << kScoreUsage << kEngineFlagsUsage;
    return 0;
  }
  absl::Status status = Score(*args);
  if (!status.ok()) return Fail("score", std::string(status.message()));
  return 0;
}

}  // namespace indexcache::cli
