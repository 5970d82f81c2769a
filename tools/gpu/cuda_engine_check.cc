// GPU check of the whole engine on --device cuda against transformers 5.17 (tests/data/goldens, the
// same cases as tests/golden_test.cc): logits within a bf16 tolerance, every layer's top-k set equal
// to transformers' except where transformers' own scores put the differing keys within a tolerance of
// the k-th score (a detected near-tie, counted and printed), and the greedy continuation token for
// token, except after a step whose transformers margin is inside the logit tolerance. Each case runs
// one-shot and in small prefill chunks; the bundled model also decodes a batch of sequences at once.
// Not a ctest test (needs a GPU): tools/gpu/check_cuda.sh runs it on the device.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "common/engine/engine.h"
#include "common/safetensors/safetensors_file.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace indexcache {
namespace {

const std::string kGoldens = std::string(INDEXCACHE_TEST_DATA) + "/goldens/";
// bf16 weights (the tiny cases' float32 weights are rounded at upload) and bf16 matrix inputs leave
// about 1% relative noise per layer in the logits; 5% of the row's scale bounds it with room.
constexpr double kLogitTolerance = 5e-2;
// Indexer scores drift the same way: keys within 3% of the row's largest score of the k-th are ties.
constexpr double kScoreTolerance = 3e-2;

nlohmann::json ReadJson(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return nlohmann::json::parse(text.str());
}

template <typename T>
std::vector<T> ReadTensor(const SafetensorsFile& file, const std::string& name) {
  const TensorView* view = file.Find(name);
  if (view == nullptr) return {};
  std::vector<T> values(view->nbytes / sizeof(T));
  std::memcpy(values.data(), view->data, view->nbytes);
  return values;
}

struct Case {
  std::string name;
  std::string model_dir;
  int32_t chunk;
};

std::string CaseName(const testing::TestParamInfo<Case>& info) {
  return info.param.name + "_chunk" + std::to_string(info.param.chunk);
}

std::unique_ptr<Engine> MakeEngine(const std::string& model_dir, int32_t chunk) {
  EngineOptions options;
  options.model_dir = model_dir;
  options.device = "cuda";
  options.max_batch_tokens = chunk;
  options.block_size = 16;
  options.kv_cache_bytes = size_t{64} << 20;
  auto engine = Engine::Create(options);
  EXPECT_TRUE(engine.ok()) << engine.status();
  return engine.ok() ? std::move(*engine) : nullptr;
}

// Greedy-decodes every prompt at once; returns each one's tokens.
std::vector<std::vector<int32_t>> GreedyBatch(Engine& engine, const std::vector<std::vector<int32_t>>& prompts,
                                              int32_t new_tokens) {
  SamplingParams params;
  params.temperature = 0.0f;
  params.max_new_tokens = new_tokens;
  params.ignore_eos = true;
  std::vector<RequestId> ids;
  for (const auto& p : prompts) {
    auto id = engine.Submit(p, params);
    EXPECT_TRUE(id.ok()) << id.status();
    ids.push_back(id.ok() ? *id : -1);
  }
  std::vector<std::vector<int32_t>> out(prompts.size());
  while (engine.HasWork()) {
    auto events = engine.Step();
    EXPECT_TRUE(events.ok()) << events.status();
    if (!events.ok()) break;
    for (const TokenEvent& e : *events) {
      EXPECT_NE(e.finish, RequestFinish::kError) << e.error;
      const size_t i = std::find(ids.begin(), ids.end(), e.request) - ids.begin();
      if (e.token >= 0 && i < out.size()) out[i].push_back(e.token);
    }
  }
  return out;
}

// Tokens must equal transformers' until a step whose margin (top-1 minus top-2 logit) is below
// `near_tie` (twice the logit error measured on this case's prefill); from there on a divergence is a
// near-tie. Returns the steps compared.
size_t CompareGreedy(const std::vector<int32_t>& got, const nlohmann::json& greedy, const std::string& what,
                     double near_tie) {
  const std::vector<int32_t> want = greedy["output_ids"].get<std::vector<int32_t>>();
  const std::vector<double> margins = greedy["margins"].get<std::vector<double>>();
  EXPECT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < std::min(got.size(), want.size()); ++i) {
    if (margins[i] < near_tie) {
      std::printf("  %s: step %zu has margin %.3f (a near-tie at bf16): compared %zu steps\n", what.c_str(), i,
                  margins[i], i);
      return i;
    }
    EXPECT_EQ(got[i], want[i]) << what << " step " << i << " (margin " << margins[i] << ")";
    if (got[i] != want[i]) return i;
  }
  return want.size();
}

class CudaGoldenCheck : public testing::TestWithParam<Case> {};

TEST_P(CudaGoldenCheck, LogitsTopKAndGreedyMatchTransformers) {
  const Case& c = GetParam();
  const nlohmann::json expected = ReadJson(kGoldens + c.name + "/expected.json");
  auto file = SafetensorsFile::Open(kGoldens + c.name + "/expected.safetensors");
  ASSERT_TRUE(file.ok()) << file.status();
  std::unique_ptr<Engine> engine = MakeEngine(c.model_dir, c.chunk);
  ASSERT_NE(engine, nullptr);
  const ModelConfig& config = engine->config();
  const std::vector<int32_t> ids = expected["input_ids"].get<std::vector<int32_t>>();
  const int64_t t = static_cast<int64_t>(ids.size()), vocab = config.vocab_size;
  const bool tail = expected.contains("tail_start");
  const int64_t first_row = tail ? expected["tail_start"].get<int64_t>() : 0;
  const std::vector<float> want_logits = ReadTensor<float>(*file, tail ? "logits_tail" : "logits");
  ASSERT_EQ(static_cast<int64_t>(want_logits.size()), (t - first_row) * vocab);

  const int64_t k = std::min<int64_t>(config.index_topk, t);
  std::vector<float> logits(t * vocab);
  std::vector<std::vector<int32_t>> topk(config.num_layers, std::vector<int32_t>(t * k, -1));
  absl::Status status = engine->ScoreChunks(ids, true, [&](int32_t begin, const ForwardResult& r) {
    std::copy(r.logits.begin(), r.logits.end(), logits.begin() + begin * vocab);
    const int64_t rows = static_cast<int64_t>(r.logits.size()) / vocab;
    for (int32_t l = 0; l < config.num_layers; ++l) {
      for (int64_t i = 0; i < rows; ++i) {
        std::copy_n(r.topk[l].begin() + i * r.topk_cols, std::min<int64_t>(r.topk_cols, k), topk[l].begin() + (begin + i) * k);
      }
    }
    return absl::OkStatus();
  });
  ASSERT_TRUE(status.ok()) << status;

  double worst = 0.0, worst_abs = 0.0;
  for (int64_t row = first_row; row < t; ++row) {
    const float* want = &want_logits[(row - first_row) * vocab];
    const float* got = &logits[row * vocab];
    double scale = 0.0;
    for (int64_t v = 0; v < vocab; ++v) scale = std::max(scale, std::abs(static_cast<double>(want[v])));
    for (int64_t v = 0; v < vocab; ++v) {
      const double err = std::abs(static_cast<double>(got[v]) - want[v]);
      worst = std::max(worst, err / scale);
      worst_abs = std::max(worst_abs, err);
    }
  }
  EXPECT_LE(worst, kLogitTolerance) << "logits";

  // Top-k: where a set differs, transformers' scores of the keys in the difference must sit within
  // the tolerance of its k-th score. Full layers' goldens carry every score (index_scores); the
  // bundled golden only the picked ones (topk_scores), so there only the keys we dropped are checked.
  const std::vector<int32_t> sources = expected["topk_source_layer"].get<std::vector<int32_t>>();
  int64_t differing_rows = 0, unexplained_rows = 0;
  for (int32_t l = 0; l < config.num_layers; ++l) {
    const std::vector<int32_t> want = ReadTensor<int32_t>(*file, "topk." + std::to_string(l));
    const std::vector<float> picked = ReadTensor<float>(*file, "topk_scores." + std::to_string(l));
    const std::vector<float> all = ReadTensor<float>(*file, "index_scores." + std::to_string(sources[l]));
    for (int64_t row = 0; row < t; ++row) {
      std::set<int32_t> want_set, got_set;
      float kth = INFINITY, scale = 0.0f;
      for (int64_t j = 0; j < k; ++j) {
        if (want[row * k + j] >= 0) {
          want_set.insert(want[row * k + j]);
          kth = std::min(kth, picked[row * k + j]);
          scale = std::max(scale, std::abs(picked[row * k + j]));
        }
        if (topk[l][row * k + j] >= 0) got_set.insert(topk[l][row * k + j]);
      }
      if (got_set == want_set) continue;
      ++differing_rows;
      const double tol = kScoreTolerance * scale;
      bool explained = got_set.size() == want_set.size();
      for (int64_t j = 0; j < k; ++j) {
        const int32_t s = want[row * k + j];
        if (s >= 0 && !got_set.count(s) && picked[row * k + j] > kth + tol) explained = false;
      }
      if (!all.empty()) {
        for (int32_t s : got_set) {
          if (!want_set.count(s) && all[row * t + s] < kth - tol) explained = false;
        }
      }
      if (!explained) {
        ++unexplained_rows;
        ADD_FAILURE() << c.name << " layer " << l << " query " << row << ": top-k differs beyond a near-tie";
      }
    }
  }
  std::printf("  %s chunk %d: worst logit error %.4f of row scale (%.4f absolute); %ld top-k rows differ, all at "
              "detected near-ties: %s\n",
              c.name.c_str(), c.chunk, worst, worst_abs, static_cast<long>(differing_rows),
              unexplained_rows == 0 ? "yes" : "NO");

  const auto& greedy = expected["greedy"];
  const std::vector<int32_t> prompt = greedy["prompt_ids"].get<std::vector<int32_t>>();
  const int32_t new_tokens = static_cast<int32_t>(greedy["output_ids"].size());
  const std::vector<std::vector<int32_t>> got = GreedyBatch(*engine, {prompt}, new_tokens);
  CompareGreedy(got[0], greedy, c.name + " greedy", 2 * worst_abs);
  EXPECT_EQ(engine->cache().num_used_blocks(), 0) << "a finished request must free its KV blocks";
}

std::vector<Case> AllCases() {
  std::vector<Case> cases;
  for (const std::string name : {"dense_allfull", "moe_freq2", "moe_pattern", "dense_topk_ge_len"}) {
    for (int32_t chunk : {512, 7}) cases.push_back({name, kGoldens + name, chunk});
  }
  for (int32_t chunk : {512, 13}) cases.push_back({"bundled", std::string(INDEXCACHE_MODELS_DIR) + "/glm-dsa-tiny-random", chunk});
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Transformers, CudaGoldenCheck, testing::ValuesIn(AllCases()), CaseName);

// Batched decode: the golden prompt three times among other prompts of different lengths, all
// decoded together; each copy must follow transformers' greedy continuation.
TEST(CudaBatchedDecodeCheck, EveryCopyOfTheGoldenPromptFollowsTransformers) {
  const nlohmann::json expected = ReadJson(kGoldens + "bundled/expected.json");
  const auto& greedy = expected["greedy"];
  const std::vector<int32_t> prompt = greedy["prompt_ids"].get<std::vector<int32_t>>();
  const int32_t new_tokens = static_cast<int32_t>(greedy["output_ids"].size());
  std::unique_ptr<Engine> engine = MakeEngine(std::string(INDEXCACHE_MODELS_DIR) + "/glm-dsa-tiny-random", 64);
  ASSERT_NE(engine, nullptr);
  std::vector<int32_t> longer(prompt);
  for (int i = 0; i < 70; ++i) longer.push_back((i * 37 + 11) % 2000);
  const std::vector<std::vector<int32_t>> prompts = {prompt, longer, prompt, {5, 6, 7}, prompt};
  const std::vector<std::vector<int32_t>> got = GreedyBatch(*engine, prompts, new_tokens);
  // Near-tie margin: twice the largest logit error of this engine on the golden prompt's prefill.
  auto file = SafetensorsFile::Open(kGoldens + "bundled/expected.safetensors");
  ASSERT_TRUE(file.ok()) << file.status();
  const std::vector<float> want_logits = ReadTensor<float>(*file, "logits_tail");
  const std::vector<int32_t> ids = expected["input_ids"].get<std::vector<int32_t>>();
  const int64_t vocab = engine->config().vocab_size, tail_start = expected["tail_start"].get<int64_t>();
  double worst_abs = 0.0;
  ASSERT_TRUE(engine->ScoreChunks(ids, false, [&](int32_t begin, const ForwardResult& r) {
    for (size_t i = 0; i < r.logits.size(); ++i) {
      const int64_t row = begin + static_cast<int64_t>(i) / vocab;
      if (row >= tail_start) {
        worst_abs = std::max(worst_abs, std::abs(static_cast<double>(r.logits[i]) -
                                                 want_logits[(row - tail_start) * vocab + i % vocab]));
      }
    }
    return absl::OkStatus();
  }).ok());
  const double near_tie = 2 * worst_abs;
  for (size_t i : {size_t{0}, size_t{2}, size_t{4}}) {
    CompareGreedy(got[i], greedy, "batched copy " + std::to_string(i), near_tie);
  }
  EXPECT_EQ(engine->cache().num_used_blocks(), 0);
}

}  // namespace
}  // namespace indexcache
