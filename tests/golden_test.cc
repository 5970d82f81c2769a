// The engine against transformers 5.17 (tests/data/goldens, made by tools/make_goldens.py on the GPU
// machine from GlmMoeDsaForCausalLM in float32): logits to 1e-4 relative, every layer's top-k set
// exactly, and the greedy continuation token for token — for dense and MoE layers, all-Full, a freq-2
// and an explicit IndexCache pattern, index_topk >= length, and the bundled BF16 model. Each case runs
// one-shot and with small prefill chunks (chunked prefill must not change anything).
#include <cmath>
#include <set>
#include <string>
#include <vector>

#include "common/engine/engine.h"
#include "common/safetensors/safetensors_file.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/golden_files.h"

namespace indexcache {
namespace {

class GoldenTest : public testing::TestWithParam<GoldenCase> {
 protected:
  void SetUp() override {
    const GoldenCase& c = GetParam();
    expected_ = ReadJson(kGoldens + c.name + "/expected.json");
    auto file = SafetensorsFile::Open(kGoldens + c.name + "/expected.safetensors");
    ASSERT_TRUE(file.ok()) << file.status();
    file_.emplace(std::move(*file));
    EngineOptions options;
    options.model_dir = c.model_dir;
    options.max_batch_tokens = c.chunk;
    options.block_size = 16;  // several blocks per sequence even at these lengths
    options.kv_cache_bytes = size_t{64} << 20;
    auto engine = Engine::Create(options);
    ASSERT_TRUE(engine.ok()) << engine.status();
    engine_ = std::move(*engine);
  }

  nlohmann::json expected_;
  std::optional<SafetensorsFile> file_;
  std::unique_ptr<Engine> engine_;
};

TEST_P(GoldenTest, LogitsAndTopKMatchTransformers) {
  const ModelConfig& config = engine_->config();
  const std::vector<int32_t> ids = expected_["input_ids"].get<std::vector<int32_t>>();
  const int64_t t = static_cast<int64_t>(ids.size());
  const int64_t vocab = config.vocab_size;
  // The bundled golden keeps only the last rows of logits (size); tiny cases keep all.
  const bool tail = expected_.contains("tail_start");
  const int64_t first_row = tail ? expected_["tail_start"].get<int64_t>() : 0;
  std::vector<int64_t> shape;
  const std::vector<float> want_logits = ReadTensor<float>(*file_, tail ? "logits_tail" : "logits", &shape);
  ASSERT_EQ(shape, (std::vector<int64_t>{t - first_row, vocab}));

  std::vector<float> logits(t * vocab);
  std::vector<std::vector<int32_t>> topk(config.num_layers);
  const int64_t k = std::min<int64_t>(config.index_topk, t);
  for (auto& rows : topk) rows.assign(t * k, -1);
  absl::Status status = engine_->ScoreChunks(ids, true, [&](int32_t begin, const ForwardResult& r) {
    std::copy(r.logits.begin(), r.logits.end(), logits.begin() + begin * vocab);
    const int64_t rows = static_cast<int64_t>(r.logits.size()) / vocab;
    for (int32_t l = 0; l < config.num_layers; ++l) {
      for (int64_t i = 0; i < rows; ++i) {
        std::copy_n(r.topk[l].begin() + i * r.topk_cols, std::min<int64_t>(r.topk_cols, k),
                    topk[l].begin() + (begin + i) * k);
      }
    }
    return absl::OkStatus();
  });
  ASSERT_TRUE(status.ok()) << status;

  // Logits: |ours - theirs| <= 1e-4 · max(|theirs|, row scale), row scale = the row's max |logit|.
  double worst = 0.0;
  for (int64_t row = first_row; row < t; ++row) {
    const float* want = &want_logits[(row - first_row) * vocab];
    const float* got = &logits[row * vocab];
    double scale = 0.0;
    for (int64_t v = 0; v < vocab; ++v) scale = std::max(scale, std::abs(static_cast<double>(want[v])));
    for (int64_t v = 0; v < vocab; ++v) {
      const double err = std::abs(static_cast<double>(got[v]) - want[v]) / std::max(scale, 1e-6);
      worst = std::max(worst, err);
      ASSERT_LE(err, 1e-4) << "row " << row << " token " << v << ": " << got[v] << " vs " << want[v];
    }
  }
  RecordProperty("max_relative_logit_error", std::to_string(worst));

  // Top-k: the same set of key positions for every layer and query (the goldens were drawn so that
  // no selection boundary is a near-tie, so sets must agree exactly).
  for (int32_t l = 0; l < config.num_layers; ++l) {
    const std::vector<int32_t> want = ReadTensor<int32_t>(*file_, "topk." + std::to_string(l), &shape);
    ASSERT_EQ(shape, (std::vector<int64_t>{t, k})) << "layer " << l;
    for (int64_t row = 0; row < t; ++row) {
      std::set<int32_t> want_set(want.begin() + row * k, want.begin() + (row + 1) * k);
      std::set<int32_t> got_set(topk[l].begin() + row * k, topk[l].begin() + (row + 1) * k);
      ASSERT_EQ(got_set, want_set) << "layer " << l << " query " << row;
    }
  }
}

TEST_P(GoldenTest, GreedyContinuationMatchesTransformersGenerate) {
  const auto& greedy = expected_["greedy"];
  const std::vector<int32_t> prompt = greedy["prompt_ids"].get<std::vector<int32_t>>();
  const std::vector<int32_t> want = greedy["output_ids"].get<std::vector<int32_t>>();
  SamplingParams params;
  params.temperature = 0.0f;
  params.max_new_tokens = static_cast<int32_t>(want.size());
  params.ignore_eos = true;
  auto id = engine_->Submit(prompt, params);
  ASSERT_TRUE(id.ok()) << id.status();
  std::vector<int32_t> got;
  while (engine_->HasWork()) {
    auto events = engine_->Step();
    ASSERT_TRUE(events.ok()) << events.status();
    for (const TokenEvent& e : *events) {
      ASSERT_NE(e.finish, RequestFinish::kError) << e.error;
      if (e.token >= 0) got.push_back(e.token);
    }
  }
  EXPECT_EQ(got, want);
  EXPECT_EQ(engine_->cache().num_used_blocks(), 0) << "a finished request must free its KV blocks";
}

INSTANTIATE_TEST_SUITE_P(Transformers, GoldenTest, testing::ValuesIn(AllGoldenCases()), GoldenCaseName);

}  // namespace
}  // namespace indexcache
