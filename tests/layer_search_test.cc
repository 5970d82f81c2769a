// The training-free layer search (common/search) against independent truths:
//   - PatternScorer's calibration loss == the mean NLL of the float64 reference (tests/reference/
//     naive_dsa.h) and of the engine's own scoring path (Engine::ScoreChunks, chunked), per pattern;
//     with retrieval cases, that mean + weight × the mean NLL of the answers' tokens, computed the same
//     two ways;
//   - a candidate resumed at its layer scores what the whole pass under its pattern scores (invariant);
//   - brute force over every pattern keeping N layers: greedy's first step picks the argmin layer, its
//     reported losses are those of its patterns, and it never beats the best pattern of its size;
//   - the result parses back through the config's pattern parser with layer 0 Full and `keep` Full layers;
//   - bad input (keep out of range, empty calibration, a checkpoint without every indexer, a batch
//     asking a layer loaded Shared to run Full, a resume without its input) is refused.
#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/engine/engine.h"
#include "common/search/greedy_layer_search.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/reference/naive_dsa.h"

namespace indexcache {
namespace {

using ::testing::HasSubstr;

const std::string kGoldens = std::string(INDEXCACHE_TEST_DATA) + "/goldens/";
const std::string kBundled = std::string(INDEXCACHE_MODELS_DIR) + "/glm-dsa-tiny-random";
const std::string kTiny = kGoldens + "dense_allfull";  // 4 dense layers, index_topk 12: sharing changes picks
// Losses from float32 engines against each other or the float64 reference (nats per token).
constexpr double kLossTol = 2e-5;

std::vector<int32_t> RandomIds(int32_t n, int32_t vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> pick(0, vocab - 1);
  std::vector<int32_t> ids(n);
  for (int32_t& id : ids) id = pick(rng);
  return ids;
}

// -log softmax(row)[target], double.
template <typename T>
double Nll(const T* row, int64_t vocab, int32_t target) {
  double max = row[0];
  for (int64_t v = 1; v < vocab; ++v) max = std::max<double>(max, row[v]);
  double sum = 0.0;
  for (int64_t v = 0; v < vocab; ++v) sum += std::exp(static_cast<double>(row[v]) - max);
  return std::log(sum) + max - static_cast<double>(row[target]);
}

// `windows` windows of `length` random tokens (all windows longer than index_topk, so Shared matters),
// and `cases` retrieval cases of `length` tokens whose last 4 are the answer, weighted `weight`.
CalibrationSet RandomCalibration(const std::string& model_dir, int32_t windows, int32_t length, uint32_t seed,
                                 int32_t cases = 0, double weight = 1.0) {
  const absl::StatusOr<ModelConfig> config = LoadModelConfig(model_dir);
  EXPECT_TRUE(config.ok()) << config.status();
  CalibrationSet set;
  for (int32_t w = 0; w < windows; ++w) set.windows.push_back(RandomIds(length, config->vocab_size, seed + w));
  for (int32_t c = 0; c < cases; ++c) {
    set.retrieval.push_back({RandomIds(length, config->vocab_size, seed + 1000 + c), length - 4});
  }
  set.retrieval_weight = weight;
  return set;
}

// The objective from per-sequence logits: the windows' mean NLL + weight × the answers' mean NLL.
// `logits_of(tokens, i)` is the row that predicts tokens[i + 1].
template <typename LogitsOf>
double Objective(const CalibrationSet& set, int64_t vocab, LogitsOf logits_of) {
  double text = 0.0, answers = 0.0;
  int64_t text_count = 0, answer_count = 0;
  for (const auto& window : set.windows) {
    for (size_t i = 0; i + 1 < window.size(); ++i) text += Nll(logits_of(window, i), vocab, window[i + 1]);
    text_count += static_cast<int64_t>(window.size()) - 1;
  }
  for (const RetrievalCase& c : set.retrieval) {
    for (size_t i = c.answer_begin - 1; i + 1 < c.tokens.size(); ++i) {
      answers += Nll(logits_of(c.tokens, i), vocab, c.tokens[i + 1]);
      ++answer_count;
    }
  }
  const double mean = text / static_cast<double>(text_count);
  return answer_count == 0 ? mean : mean + set.retrieval_weight * answers / static_cast<double>(answer_count);
}

std::vector<IndexerType> Pattern(const std::string& letters) {
  std::vector<IndexerType> types;
  for (char ch : letters) types.push_back(ch == 'F' ? IndexerType::kFull : IndexerType::kShared);
  return types;
}

// Truth 1: the float64 reference's objective under `pattern`.
double ReferenceLoss(const reference::NaiveDsa& ref, const CalibrationSet& set,
                     const std::vector<IndexerType>& pattern) {
  reference::NaiveDsaOptions options;
  options.indexer_types = pattern;
  std::map<const std::vector<int32_t>*, reference::NaiveDsaResult> forward;
  auto logits_of = [&](const std::vector<int32_t>& tokens, size_t i) -> const double* {
    auto it = forward.find(&tokens);
    if (it == forward.end()) {
      absl::StatusOr<reference::NaiveDsaResult> r = ref.Forward(tokens, options);
      EXPECT_TRUE(r.ok()) << r.status();
      it = forward.emplace(&tokens, *std::move(r)).first;
    }
    return it->second.row(static_cast<int32_t>(i));
  };
  return Objective(set, ref.config().vocab_size, logits_of);
}

// Truth 2: the engine's scoring path (what `indexcache perplexity` runs), in chunks of 32 tokens.
double EngineLoss(const std::string& model_dir, const CalibrationSet& set, const std::vector<IndexerType>& pattern) {
  EngineOptions o;
  o.model_dir = model_dir;
  o.index_pattern = FormatIndexPattern(pattern);
  o.max_batch_tokens = 32;
  o.block_size = 16;
  o.kv_cache_bytes = size_t{64} << 20;
  absl::StatusOr<std::unique_ptr<Engine>> engine = Engine::Create(o);
  EXPECT_TRUE(engine.ok()) << engine.status();
  if (!engine.ok()) return NAN;
  const int32_t vocab = (*engine)->config().vocab_size;
  std::map<const std::vector<int32_t>*, std::vector<float>> logits;  // per sequence, [T, vocab]
  auto logits_of = [&](const std::vector<int32_t>& tokens, size_t i) -> const float* {
    auto it = logits.find(&tokens);
    if (it == logits.end()) {
      std::vector<float>& all = logits[&tokens];
      all.resize(tokens.size() * vocab);
      absl::Status s = (*engine)->ScoreChunks(tokens, false, [&](int32_t begin, const ForwardResult& r) {
        std::copy(r.logits.begin(), r.logits.end(), all.begin() + int64_t{begin} * vocab);
        return absl::OkStatus();
      });
      EXPECT_TRUE(s.ok()) << s;
      it = logits.find(&tokens);
    }
    return it->second.data() + i * vocab;
  };
  return Objective(set, vocab, logits_of);
}

std::unique_ptr<PatternScorer> MakeScorer(const std::string& model_dir, const CalibrationSet& set) {
  PatternScorerOptions o;
  o.model_dir = model_dir;
  o.longest_window = set.longest_window();
  absl::StatusOr<std::unique_ptr<PatternScorer>> scorer = PatternScorer::Create(o);
  EXPECT_TRUE(scorer.ok()) << scorer.status();
  return scorer.ok() ? std::move(*scorer) : nullptr;
}

// Every pattern of `layers` layers with layer 0 Full and `keep` Full layers in all.
std::vector<std::vector<IndexerType>> AllPatterns(int32_t layers, int32_t keep) {
  std::vector<std::vector<IndexerType>> out;
  for (uint32_t mask = 0; mask < (1u << (layers - 1)); ++mask) {
    if (__builtin_popcount(mask) != keep - 1) continue;
    std::vector<IndexerType> p(layers, IndexerType::kShared);
    p[0] = IndexerType::kFull;
    for (int32_t l = 1; l < layers; ++l) {
      if (mask & (1u << (l - 1))) p[l] = IndexerType::kFull;
    }
    out.push_back(p);
  }
  return out;
}

// Without retrieval cases, and with two weighted 3× (the answers' term, hence its float32 error, is
// scaled by the weight: the tolerance is the text's plus the weight × the answers').
class ScorerLossTest : public testing::TestWithParam<std::pair<int32_t, double>> {};

TEST_P(ScorerLossTest, LossEqualsFloat64ReferenceAndEnginePath) {
  const auto [cases, weight] = GetParam();
  const CalibrationSet set = RandomCalibration(kTiny, 3, 40, 11, cases, weight);
  absl::StatusOr<reference::NaiveDsa> ref = reference::NaiveDsa::Load(kTiny);
  ASSERT_TRUE(ref.ok()) << ref.status();
  auto scorer = MakeScorer(kTiny, set);
  ASSERT_NE(scorer, nullptr);
  for (const std::string letters : {"FFFF", "FSFF", "FFFS", "FSSS", "FSFS"}) {
    SCOPED_TRACE(letters);
    absl::StatusOr<double> loss = scorer->MeanLoss(set, Pattern(letters));
    ASSERT_TRUE(loss.ok()) << loss.status();
    EXPECT_NEAR(*loss, ReferenceLoss(*ref, set, Pattern(letters)), kLossTol * (1 + weight));
    EXPECT_NEAR(*loss, EngineLoss(kTiny, set, Pattern(letters)), kLossTol * (1 + weight));
  }
}

INSTANTIATE_TEST_SUITE_P(Calibration, ScorerLossTest,
                         testing::Values(std::pair<int32_t, double>{0, 1.0}, std::pair<int32_t, double>{2, 3.0}),
                         [](const testing::TestParamInfo<std::pair<int32_t, double>>& info) {
                           return info.param.first == 0 ? std::string("windows") : std::string("with_retrieval");
                         });

// Making layer j Shared leaves layers < j as they were: resuming at j from the captured input is the
// whole pass. Also from a base that already has Shared layers, and for every layer of the bundled model.
TEST(PatternScorer, ResumedPassEqualsWholePass) {
  const CalibrationSet set = RandomCalibration(kBundled, 1, 160, 5);
  auto scorer = MakeScorer(kBundled, set);
  ASSERT_NE(scorer, nullptr);
  for (const std::string base_letters : {"FFFFFFFF", "FFSFFSFF"}) {
    const std::vector<IndexerType> base = Pattern(base_letters);
    std::vector<LayerInput> inputs;
    absl::StatusOr<WindowNll> whole_base = scorer->Score(set.windows[0], base, &inputs);
    ASSERT_TRUE(whole_base.ok()) << whole_base.status();
    ASSERT_EQ(inputs.size(), 8u);
    for (int32_t j = 1; j < 8; ++j) {
      SCOPED_TRACE(absl::StrCat(base_letters, " layer ", j));
      std::vector<IndexerType> trial = base;
      trial[j] = IndexerType::kShared;
      absl::StatusOr<WindowNll> resumed = scorer->ScoreFrom(set.windows[0], trial, j, inputs[j]);
      absl::StatusOr<WindowNll> whole = scorer->Score(set.windows[0], trial);
      ASSERT_TRUE(resumed.ok()) << resumed.status();
      ASSERT_TRUE(whole.ok()) << whole.status();
      EXPECT_EQ(resumed->count, whole->count);
      EXPECT_NEAR(resumed->sum, whole->sum, 1e-9 * std::abs(whole->sum));
      // Resuming with the base pattern itself reproduces the base.
      absl::StatusOr<WindowNll> same = scorer->ScoreFrom(set.windows[0], base, j, inputs[j]);
      ASSERT_TRUE(same.ok()) << same.status();
      EXPECT_NEAR(same->sum, whole_base->sum, 1e-9 * std::abs(whole_base->sum));
    }
  }
}

struct BruteForceCase {
  // (Brace initializers: the instantiations may leave the retrieval members out.)
  std::string model{};
  int32_t windows{0}, length{0};
  bool use_reference{false};  // float64 reference as the truth (tiny model); else the engine's scoring path
  int32_t retrieval_cases{0};  // beside the windows, weighted retrieval_weight
  double retrieval_weight{1.0};
};

void PrintTo(const BruteForceCase& c, std::ostream* os) {
  *os << c.model << (c.use_reference ? " (float64)" : " (engine)") << ", " << c.retrieval_cases
      << " retrieval cases";
}

class BruteForceTest : public testing::TestWithParam<BruteForceCase> {
 protected:
  double Truth(const CalibrationSet& set, const std::vector<IndexerType>& pattern) {
    if (GetParam().use_reference) {
      if (!ref_) ref_ = std::make_unique<reference::NaiveDsa>(*reference::NaiveDsa::Load(GetParam().model));
      return ReferenceLoss(*ref_, set, pattern);
    }
    return EngineLoss(GetParam().model, set, pattern);
  }
  // The answers' term, hence its float32 error, is scaled by their weight.
  double Tol() const {
    return kLossTol * (1.0 + (GetParam().retrieval_cases > 0 ? GetParam().retrieval_weight : 0.0));
  }
  std::unique_ptr<reference::NaiveDsa> ref_;
};

TEST_P(BruteForceTest, FirstStepPicksTheArgminLayer) {
  const BruteForceCase& c = GetParam();
  const CalibrationSet set = RandomCalibration(c.model, c.windows, c.length, 21, c.retrieval_cases, c.retrieval_weight);
  auto scorer = MakeScorer(c.model, set);
  ASSERT_NE(scorer, nullptr);
  const int32_t layers = scorer->config().num_layers;

  // Brute force: every pattern with one layer Shared.
  std::vector<std::pair<double, int32_t>> by_loss;
  for (int32_t j = 1; j < layers; ++j) {
    std::vector<IndexerType> p(layers, IndexerType::kFull);
    p[j] = IndexerType::kShared;
    by_loss.emplace_back(Truth(set, p), j);
  }
  std::sort(by_loss.begin(), by_loss.end());
  ASSERT_GT(by_loss[1].first - by_loss[0].first, 4 * Tol()) << "the calibration data leaves the argmin ambiguous";

  LayerSearchOptions options;
  options.keep = layers - 1;
  absl::StatusOr<std::vector<SearchStep>> path = GreedyLayerSearch(*scorer, set, options);
  ASSERT_TRUE(path.ok()) << path.status();
  ASSERT_EQ(path->size(), 2u);
  EXPECT_EQ((*path)[0].layer, -1);
  EXPECT_NEAR((*path)[0].loss, Truth(set, std::vector<IndexerType>(layers, IndexerType::kFull)), Tol());
  EXPECT_EQ((*path)[1].layer, by_loss[0].second);
  EXPECT_NEAR((*path)[1].loss, by_loss[0].first, Tol());
}

// Down to `keep` = 2: each step adds one Shared layer, reports its pattern's true loss, and the end
// is no better than the best of all patterns keeping 2 layers (greedy cannot beat the optimum).
TEST_P(BruteForceTest, PathIsHonestAndNeverBeatsTheOptimum) {
  const BruteForceCase& c = GetParam();
  const CalibrationSet set = RandomCalibration(c.model, c.windows, c.length, 33, c.retrieval_cases, c.retrieval_weight);
  auto scorer = MakeScorer(c.model, set);
  ASSERT_NE(scorer, nullptr);
  const int32_t layers = scorer->config().num_layers;
  std::vector<int32_t> step_seen;
  LayerSearchOptions options;
  options.keep = 2;
  options.on_step = [&](const SearchStep& s) { step_seen.push_back(s.step); };
  absl::StatusOr<std::vector<SearchStep>> path = GreedyLayerSearch(*scorer, set, options);
  ASSERT_TRUE(path.ok()) << path.status();
  ASSERT_EQ(path->size(), static_cast<size_t>(layers - 1));
  std::vector<int32_t> want_steps(layers - 1);
  for (int32_t s = 0; s < layers - 1; ++s) want_steps[s] = s;
  EXPECT_EQ(step_seen, want_steps);
  for (size_t s = 0; s < path->size(); ++s) {
    const SearchStep& step = (*path)[s];
    SCOPED_TRACE(absl::StrCat("step ", s, " ", FormatIndexPattern(step.pattern)));
    EXPECT_EQ(step.step, static_cast<int32_t>(s));
    EXPECT_EQ(step.pattern[0], IndexerType::kFull);
    if (s > 0) {
      std::vector<IndexerType> want = (*path)[s - 1].pattern;
      ASSERT_GE(step.layer, 1);
      EXPECT_EQ(want[step.layer], IndexerType::kFull);
      want[step.layer] = IndexerType::kShared;
      EXPECT_EQ(step.pattern, want);
    }
    EXPECT_NEAR(step.loss, Truth(set, step.pattern), Tol());
  }
  double best = INFINITY;
  for (const auto& p : AllPatterns(layers, 2)) best = std::min(best, Truth(set, p));
  EXPECT_GE(path->back().loss, best - Tol());

  // The result is an index_topk_pattern string the config parser resolves to the same layers.
  const std::string letters = FormatIndexPattern(path->back().pattern);
  absl::StatusOr<std::vector<IndexerType>> parsed = ParseIndexPattern(letters, layers);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(*parsed, path->back().pattern);
  std::ifstream config_in(c.model + "/config.json");
  nlohmann::json config = nlohmann::json::parse(config_in);
  config.erase("indexer_types");
  config["index_topk_pattern"] = letters;
  absl::StatusOr<ModelConfig> resolved = ParseModelConfig(config.dump());
  ASSERT_TRUE(resolved.ok()) << resolved.status();
  EXPECT_EQ(resolved->indexer_types, path->back().pattern);
  EXPECT_EQ(resolved->num_full_layers(), 2);
}

INSTANTIATE_TEST_SUITE_P(Models, BruteForceTest,
                         testing::Values(BruteForceCase{kTiny, 3, 40, true}, BruteForceCase{kBundled, 2, 160, false},
                                         BruteForceCase{kTiny, 3, 40, true, 2, 4.0}),
                         [](const testing::TestParamInfo<BruteForceCase>& info) {
                           return std::string(info.param.use_reference ? "tiny_float64" : "bundled_engine") +
                                  (info.param.retrieval_cases > 0 ? "_retrieval" : "");
                         });

TEST(GreedyLayerSearch, KeepingEveryLayerIsAllFull) {
  const CalibrationSet set = RandomCalibration(kTiny, 1, 30, 3);
  auto scorer = MakeScorer(kTiny, set);
  ASSERT_NE(scorer, nullptr);
  LayerSearchOptions options;
  options.keep = 4;
  absl::StatusOr<std::vector<SearchStep>> path = GreedyLayerSearch(*scorer, set, options);
  ASSERT_TRUE(path.ok()) << path.status();
  ASSERT_EQ(path->size(), 1u);
  EXPECT_EQ(FormatIndexPattern(path->back().pattern), "FFFF");
  EXPECT_NEAR(path->back().loss, EngineLoss(kTiny, set, Pattern("FFFF")), kLossTol);
}

TEST(GreedyLayerSearch, BadInputIsRefused) {
  const CalibrationSet set = RandomCalibration(kTiny, 1, 30, 3);
  auto scorer = MakeScorer(kTiny, set);
  ASSERT_NE(scorer, nullptr);
  for (const auto& [keep, says] : std::vector<std::pair<int32_t, std::string>>{
           {0, "at least 1"}, {-2, "at least 1"}, {5, "exceeds the model's 4 layers"}}) {
    LayerSearchOptions options;
    options.keep = keep;
    absl::StatusOr<std::vector<SearchStep>> path = GreedyLayerSearch(*scorer, set, options);
    ASSERT_FALSE(path.ok()) << keep;
    EXPECT_EQ(path.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(path.status().message()), HasSubstr(says));
  }
  LayerSearchOptions options;
  options.keep = 2;
  absl::StatusOr<std::vector<SearchStep>> empty = GreedyLayerSearch(*scorer, CalibrationSet{}, options);
  ASSERT_FALSE(empty.ok());
  EXPECT_THAT(std::string(empty.status().message()), HasSubstr("empty"));

  // A window longer than the scorer was sized for, and a resumed pass given the wrong input.
  EXPECT_FALSE(scorer->Score(RandomIds(31, 256, 1), Pattern("FFFF")).ok());
  LayerInput wrong;
  wrong.hidden.resize(7);
  absl::StatusOr<WindowNll> resumed = scorer->ScoreFrom(set.windows[0], Pattern("FFSF"), 2, wrong);
  ASSERT_FALSE(resumed.ok());
  EXPECT_THAT(std::string(resumed.status().message()), HasSubstr("layer 2's input"));
}

TEST(PatternScorer, RefusesCheckpointsWithoutEveryIndexerAndOverlongWindows) {
  PatternScorerOptions o;
  o.model_dir = kGoldens + "moe_freq2";  // its Shared layers were saved without indexer weights
  o.longest_window = 16;
  absl::StatusOr<std::unique_ptr<PatternScorer>> scorer = PatternScorer::Create(o);
  ASSERT_FALSE(scorer.ok());
  EXPECT_THAT(std::string(scorer.status().message()), HasSubstr("every layer needs its indexer weights"));

  o.model_dir = kTiny;
  o.longest_window = 100000;
  scorer = PatternScorer::Create(o);
  ASSERT_FALSE(scorer.ok());
  EXPECT_THAT(std::string(scorer.status().message()), HasSubstr("positions"));
}

// The ForwardBatch fields the search relies on refuse what they cannot do.
TEST(ForwardBatchForSearch, RefusesFullOnLayersLoadedSharedAndBadResumes) {
  const std::string dir = kGoldens + "moe_freq2";  // loaded as its config says: F F S F S
  absl::StatusOr<ModelConfig> config = LoadModelConfig(dir);
  ASSERT_TRUE(config.ok()) << config.status();
  absl::StatusOr<std::unique_ptr<Backend>> backend = CreateBackend("cpu", 1);
  ASSERT_TRUE(backend.ok()) << backend.status();
  absl::StatusOr<std::unique_ptr<DsaModel>> model = DsaModel::Load(dir, *config, backend->get());
  ASSERT_TRUE(model.ok()) << model.status();
  absl::StatusOr<std::unique_ptr<PagedKvCache>> cache =
      PagedKvCache::Create(backend->get(), (*model)->CacheSpec(16), size_t{4} << 20);
  ASSERT_TRUE(cache.ok()) << cache.status();
  ASSERT_TRUE((*cache)->Reserve(0, 8).ok());
  auto batch = [] {
    ForwardBatch b;
    b.token_ids = {3, 4, 5, 6};
    b.positions = {0, 1, 2, 3};
    b.token_seq = {0, 0, 0, 0};
    b.sequences = {0};
    b.logit_rows = {3};
    return b;
  };
  auto refused = [&](const ForwardBatch& b, const std::string& says) {
    absl::StatusOr<ForwardResult> r = (*model)->Forward(b, **cache);
    ASSERT_FALSE(r.ok()) << says;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(r.status().message()), HasSubstr(says));
  };
  ForwardBatch all_full = batch();
  all_full.indexer_types = Pattern("FFFFF");
  refused(all_full, "layer 2 cannot run Full");
  ForwardBatch short_pattern = batch();
  short_pattern.indexer_types = Pattern("FFS");
  refused(short_pattern, "has 3 layers but the model has 5");
  ForwardBatch past_end = batch();
  past_end.first_layer = 5;
  refused(past_end, "first layer 5 is outside [0, 5)");
  ForwardBatch no_input = batch();
  no_input.first_layer = 2;
  refused(no_input, "needs its input");
  LayerInput no_topk;
  no_topk.hidden.resize(4 * config->hidden_size);
  ForwardBatch shared_without_selection = batch();
  shared_without_selection.first_layer = 2;  // Shared: needs the selection in force
  shared_without_selection.resume = &no_topk;
  refused(shared_without_selection, "layer 2's input");

  // A pattern that only turns Full layers Shared runs, and equals the model loaded with it.
  ForwardBatch fewer = batch();
  fewer.indexer_types = Pattern("FSSFS");
  absl::StatusOr<ForwardResult> got = (*model)->Forward(fewer, **cache);
  ASSERT_TRUE(got.ok()) << got.status();
  ModelConfig reloaded = *config;
  reloaded.indexer_types = Pattern("FSSFS");
  absl::StatusOr<std::unique_ptr<DsaModel>> other = DsaModel::Load(dir, reloaded, backend->get());
  ASSERT_TRUE(other.ok()) << other.status();
  absl::StatusOr<ForwardResult> want = (*other)->Forward(batch(), **cache);
  ASSERT_TRUE(want.ok()) << want.status();
  ASSERT_EQ(got->logits.size(), want->logits.size());
  for (size_t i = 0; i < want->logits.size(); ++i) EXPECT_FLOAT_EQ(got->logits[i], want->logits[i]) << i;
}

}  // namespace
}  // namespace indexcache
