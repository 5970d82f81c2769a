// The near-tie judge of divergence.h against the in-process engine: it finds the first difference,
// chooses there what the engine chose (greedy and seeded draws), and calls a clear difference no tie.
#include "tests/e2e/divergence.h"

#include <vector>

#include "gtest/gtest.h"
#include "tests/e2e/e2e_common.h"
#include "tests/engine_steps.h"

namespace indexcache::e2e {
namespace {

constexpr int32_t kTokens = 24;

std::unique_ptr<Engine> MakeEngine() {
  EngineOptions options;
  options.model_dir = kModel;
  absl::StatusOr<std::unique_ptr<Engine>> engine = Engine::Create(options);
  EXPECT_TRUE(engine.ok()) << engine.status();
  return engine.ok() ? *std::move(engine) : nullptr;
}

std::vector<int32_t> Generate(Engine& engine, const std::vector<int32_t>& prompt, const SamplingParams& params) {
  absl::StatusOr<RequestId> id = engine.Submit(prompt, params);
  EXPECT_TRUE(id.ok()) << id.status();
  return id.ok() ? ::indexcache::engine_steps::DecodeToEnd(engine, *id) : std::vector<int32_t>();
}

SamplingParams Params(float temperature) {
  SamplingParams params;
  params.temperature = temperature;
  params.seed = 1008;
  params.max_new_tokens = kTokens;
  params.ignore_eos = true;
  return params;
}

// The token the engine ranks last at generated index `k`: never next to the chosen one.
int32_t LeastLikely(Engine& engine, const std::vector<int32_t>& prompt, const std::vector<int32_t>& truth, int32_t k) {
  std::vector<int32_t> ids = prompt;
  ids.insert(ids.end(), truth.begin(), truth.begin() + k);
  absl::StatusOr<std::vector<float>> logits = LastLogits(engine, ids);
  EXPECT_TRUE(logits.ok()) << logits.status();
  if (!logits.ok()) return 0;
  return static_cast<int32_t>(std::min_element(logits->begin(), logits->end()) - logits->begin());
}

class DivergenceTest : public ::testing::TestWithParam<float> {};

TEST_P(DivergenceTest, FindsTheFirstDifferenceAndJudgesItAgainstTheEngine) {
  std::unique_ptr<Engine> engine = MakeEngine();
  ASSERT_NE(engine, nullptr);
  const std::vector<int32_t> golden = GoldenInput();
  const std::vector<int32_t> prompt(golden.begin(), golden.begin() + 40);
  const SamplingParams params = Params(GetParam());
  const std::vector<int32_t> truth = Generate(*engine, prompt, params);
  ASSERT_EQ(truth.size(), static_cast<size_t>(kTokens));

  absl::StatusOr<Divergence> same = JudgeDivergence(*engine, prompt, params, truth, truth);
  ASSERT_TRUE(same.ok()) << same.status();
  EXPECT_EQ(same->position, -1);

  // Every position in turn: the judge's own pass must choose what the engine chose there.
  for (int32_t k = 0; k < kTokens; ++k) {
    std::vector<int32_t> altered = truth;
    altered[k] = LeastLikely(*engine, prompt, truth, k);
    ASSERT_NE(altered[k], truth[k]);
    absl::StatusOr<Divergence> judged = JudgeDivergence(*engine, prompt, params, truth, altered);
    ASSERT_TRUE(judged.ok()) << judged.status();
    EXPECT_EQ(judged->position, k);
    EXPECT_EQ(judged->judged_choice, truth[k]) << "the judge's pass does not choose what the engine chose: "
                                               << judged->detail;
    EXPECT_FALSE(judged->tie) << judged->detail;
  }

  std::vector<int32_t> shorter(truth.begin(), truth.begin() + kTokens / 2);
  absl::StatusOr<Divergence> cut = JudgeDivergence(*engine, prompt, params, truth, shorter);
  ASSERT_TRUE(cut.ok()) << cut.status();
  EXPECT_EQ(cut->position, kTokens / 2);
  EXPECT_FALSE(cut->tie);
}

INSTANTIATE_TEST_SUITE_P(GreedyAndSeeded, DivergenceTest, ::testing::Values(0.0f, 0.8f));

TEST(DivergenceJudge, RefusesFiltersItDoesNotModel) {
  std::unique_ptr<Engine> engine = MakeEngine();
  ASSERT_NE(engine, nullptr);
  SamplingParams params = Params(0.8f);
  params.top_p = 0.9f;
  EXPECT_FALSE(JudgeDivergence(*engine, {1, 2, 3}, params, {4, 5}, {4, 6}).ok());
}

}  // namespace
}  // namespace indexcache::e2e
