// Backend::SampleTokens on the CPU backend: the op runs the host's one pipeline on draws the request's
// Sampler made, so with the same seed it must draw exactly what Sampler::Sample draws (the pipeline's
// own truth is tests/sampling/sampler_test.cc, against a full-sort reference).
#include <cstring>
#include <random>
#include <vector>

#include "common/backend/backend.h"
#include "gtest/gtest.h"
#include "tests/sampling_cases.h"

namespace indexcache {
namespace {

// Runs SampleTokens over `rows` with `draws` on `be`; returns one id per row.
std::vector<int32_t> SampleOn(Backend& be, const std::vector<std::vector<float>>& rows,
                              const std::vector<SamplingDraw>& draws) {
  const int64_t n = static_cast<int64_t>(rows.size()), vocab = static_cast<int64_t>(rows[0].size());
  auto logits = be.Allocate(n * vocab * sizeof(float));
  auto packed = be.Allocate(n * sizeof(SamplingDraw));
  auto ids = be.Allocate(n * sizeof(int32_t));
  EXPECT_TRUE(logits.ok() && packed.ok() && ids.ok());
  const Tensor x = logits->View(DType::kF32, n, vocab);
  for (int64_t r = 0; r < n; ++r) be.Upload(rows[r].data(), x.Rows(r, 1));
  const Tensor d = packed->View(DType::kI32, n, kSamplingDrawWords);
  be.Upload(draws.data(), d);
  const Tensor out = ids->View(DType::kI32, n, 1);
  be.Fill(out, 0.0f);
  be.SampleTokens(x, d, out);
  std::vector<int32_t> got(n);
  EXPECT_TRUE(be.Download(out, got.data()).ok());
  return got;
}

TEST(SampleTokensTest, CpuOpDrawsWhatTheSamplerDrawsFromTheSameSeed) {
  auto backend = CreateBackend("cpu", 1);
  ASSERT_TRUE(backend.ok()) << backend.status();
  for (const int32_t vocab : {37, 1000, 5003}) {
    const std::vector<SamplingCase> cases = MakeSamplingCases(vocab, 120, /*seed=*/vocab);
    std::vector<Sampler> reference, feeding;  // two Samplers per case, from the same seed
    std::vector<std::vector<float>> rows;
    for (const SamplingCase& c : cases) {
      auto a = Sampler::Create(c.params, vocab, 0), b = Sampler::Create(c.params, vocab, 0);
      ASSERT_TRUE(a.ok() && b.ok()) << a.status();
      reference.push_back(*std::move(a));
      feeding.push_back(*std::move(b));
      rows.push_back(c.logits);
    }
    for (int step = 0; step < 4; ++step) {  // successive tokens: the RNG streams must stay in step
      std::vector<SamplingDraw> draws;
      for (Sampler& s : feeding) draws.push_back(s.NextDraw());
      const std::vector<int32_t> got = SampleOn(**backend, rows, draws);
      for (size_t i = 0; i < cases.size(); ++i) {
        const absl::StatusOr<int32_t> want = reference[i].Sample(rows[i]);
        EXPECT_EQ(got[i], want.ok() ? *want : -1)
            << "vocab " << vocab << " case " << i << " (" << cases[i].kind << ", T " << cases[i].params.temperature
            << ", top_k " << cases[i].params.top_k << ", top_p " << cases[i].params.top_p << ", min_p "
            << cases[i].params.min_p << ") step " << step;
      }
    }
  }
}

// The draw is the standard's engine output: uniform_bits = the top 53 bits of each std::mt19937_64
// output in turn, one per sampled token, none for a greedy one.
TEST(SampleTokensTest, NextDrawTakesOneEngineOutputPerSampledToken) {
  SamplingParams p;
  p.temperature = 0.9f;
  p.top_k = 7;
  p.top_p = 0.5f;
  p.min_p = 0.25f;
  p.seed = 1234;
  auto sampler = Sampler::Create(p, 100, 0);
  ASSERT_TRUE(sampler.ok());
  std::mt19937_64 engine(1234);
  for (int i = 0; i < 50; ++i) {
    const SamplingDraw d = sampler->NextDraw();
    EXPECT_EQ(d.uniform_bits, engine() >> 11);
    EXPECT_EQ(d.temperature, 0.9f);
    EXPECT_EQ(d.top_k, 7);
    EXPECT_EQ(d.top_p, 0.5f);
    EXPECT_EQ(d.min_p, 0.25f);
  }
  p.temperature = 0.0f;
  auto greedy = Sampler::Create(p, 100, 0);
  ASSERT_TRUE(greedy.ok());
  for (int i = 0; i < 5; ++i) EXPECT_EQ(greedy->NextDraw().uniform_bits, 0u);
}

}  // namespace
}  // namespace indexcache
