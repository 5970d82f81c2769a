// GPU check of Backend::SampleTokens (common/backend/cuda/cuda_sampling.cu) against the host pipeline
// (the CPU backend's op, SamplingPipeline::Run):
//  1. Random rows of many kinds and parameter mixes (tests/sampling_cases.h: ties, NaN/-inf, +inf,
//     -0/+0, nothing usable, top_k >= vocab, top_p = 1, min_p = 1, greedy) at vocab 154,880, 2,048
//     and 37: equal token for token, except draws the host itself puts within 1e-5 (relative) of a
//     CDF or filter boundary (TokensNearby), whose GPU token must then be one of the host's nearby
//     tokens. CUDA's expf is within 2 ulp of glibc's, so such draws exist; they are counted.
//  2. Captured in a graph and replayed with new draws uploaded: bit-identical to the eager launches.
//  3. Seeded sampled generation on the bundled model: DsaModel decode steps on CUDA (graphs on) with
//     device draws equal the host pipeline on the same steps' downloaded logits; the CUDA engine's
//     tokens equal those; CPU and CUDA engine tokens are compared, and where they part the check
//     says why (the two backends' logits at that step, and what each draw picks from each).
// Not a ctest test (needs a GPU): tools/gpu/check_cuda.sh runs it on the device.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "common/backend/backend.h"
#include "common/engine/engine.h"
#include "common/kv/paged_kv_cache.h"
#include "common/model/dsa_model.h"
#include "gtest/gtest.h"
#include "tests/golden_files.h"
#include "tests/sampling_cases.h"
#include "tests/sampling_replay.h"

namespace indexcache {
namespace {

const std::string kModel = std::string(INDEXCACHE_MODELS_DIR) + "/glm-dsa-tiny-random";
constexpr double kBoundaryEps = 1e-5;

std::unique_ptr<Backend> Make(const char* device) {
  auto backend = CreateBackend(device);
  EXPECT_TRUE(backend.ok()) << backend.status();
  return backend.ok() ? std::move(*backend) : nullptr;
}

// Device memory for one batch of rows: logits, packed draws, ids.
struct Batch {
  Buffer logits, draws, ids;
  Tensor x, d, out;
  Batch(Backend& be, int64_t rows, int64_t vocab) {
    auto l = be.Allocate(rows * vocab * sizeof(float));
    auto w = be.Allocate(rows * sizeof(SamplingDraw));
    auto i = be.Allocate(rows * sizeof(int32_t));
    EXPECT_TRUE(l.ok() && w.ok() && i.ok());
    logits = std::move(*l);
    draws = std::move(*w);
    ids = std::move(*i);
    x = logits.View(DType::kF32, rows, vocab);
    d = draws.View(DType::kI32, rows, kSamplingDrawWords);
    out = ids.View(DType::kI32, rows, 1);
  }
  std::vector<int32_t> Run(Backend& be, const std::vector<SamplingDraw>& host_draws) {
    const std::vector<int32_t> poison(out.rows, -7);  // every row must be written
    be.Upload(poison.data(), out);
    be.Upload(host_draws.data(), d);
    be.SampleTokens(x, d, out);
    std::vector<int32_t> got(out.rows);
    EXPECT_TRUE(be.Download(out, got.data()).ok());
    return got;
  }
};

TEST(CudaSamplingCheck, EqualsTheHostPipelineExceptDetectedBoundaryDraws) {
  auto gpu = Make("cuda");
  ASSERT_NE(gpu, nullptr);
  SamplingPipeline host;
  struct Size {
    int32_t vocab;
    int count;
  };
  int total = 0, boundary = 0;
  for (const Size size : {Size{154880, 320}, Size{2048, 2000}, Size{37, 2000}}) {
    const std::vector<SamplingCase> cases = MakeSamplingCases(size.vocab, size.count, /*seed=*/size.vocab + 1);
    constexpr int64_t kRowsPerLaunch = 64;
    Batch batch(*gpu, kRowsPerLaunch, size.vocab);
    int size_boundary = 0;
    for (size_t begin = 0; begin < cases.size(); begin += kRowsPerLaunch) {
      const int64_t rows = std::min<int64_t>(kRowsPerLaunch, static_cast<int64_t>(cases.size() - begin));
      std::vector<SamplingDraw> draws(kRowsPerLaunch);  // rows past the cases: greedy on stale logits
      for (int64_t r = 0; r < rows; ++r) {
        const SamplingCase& c = cases[begin + r];
        gpu->Upload(c.logits.data(), batch.x.Rows(r, 1));
        auto sampler = Sampler::Create(c.params, size.vocab, 0);
        ASSERT_TRUE(sampler.ok()) << sampler.status();
        draws[r] = sampler->NextDraw();
      }
      const std::vector<int32_t> got = batch.Run(*gpu, draws);
      for (int64_t r = 0; r < rows; ++r) {
        const SamplingCase& c = cases[begin + r];
        const int32_t want = HostToken(host, c.logits, draws[r]);
        ++total;
        if (got[r] == want) continue;
        const std::vector<int32_t> nearby = TokensNearby(c.logits, draws[r], kBoundaryEps);
        const bool detected = nearby.size() > 1 && std::find(nearby.begin(), nearby.end(), got[r]) != nearby.end();
        size_boundary += detected ? 1 : 0;
        EXPECT_TRUE(detected) << "vocab " << size.vocab << " row " << begin + r << " (" << c.kind << ", T "
                              << c.params.temperature << ", top_k " << c.params.top_k << ", top_p " << c.params.top_p
                              << ", min_p " << c.params.min_p << ", u " << SamplingPipeline::Uniform(draws[r].uniform_bits)
                              << "): GPU drew " << got[r] << ", host " << want << ", and no boundary is near the draw";
      }
    }
    std::printf("sampling check: vocab %d: %d rows, %d at a detected boundary\n", size.vocab, size.count,
                size_boundary);
    boundary += size_boundary;
  }
  EXPECT_LE(boundary, total / 100) << "boundary draws should be rare";
}

// The op records into a graph (the decode step's) and replays with whatever draws were uploaded since.
TEST(CudaSamplingCheck, CapturedEqualsEager) {
  auto gpu = Make("cuda");
  ASSERT_NE(gpu, nullptr);
  ASSERT_TRUE(gpu->SupportsCapture());
  constexpr int32_t kVocab = 154880;
  constexpr int64_t kRows = 16;
  std::vector<SamplingCase> cases = MakeSamplingCases(kVocab, kRows, /*seed=*/99);
  Batch batch(*gpu, kRows, kVocab);
  for (int64_t r = 0; r < kRows; ++r) gpu->Upload(cases[r].logits.data(), batch.x.Rows(r, 1));
  std::vector<Sampler> samplers;
  for (SamplingCase& c : cases) {
    c.params.temperature = std::max(c.params.temperature, 0.5f);  // every row draws
    auto s = Sampler::Create(c.params, kVocab, 0);
    ASSERT_TRUE(s.ok());
    samplers.push_back(*std::move(s));
  }
  auto next_draws = [&] {
    std::vector<SamplingDraw> d;
    for (Sampler& s : samplers) d.push_back(s.NextDraw());
    return d;
  };
  std::vector<SamplingDraw> draws = next_draws();
  const std::vector<int32_t> eager = batch.Run(*gpu, draws);
  ASSERT_TRUE(gpu->BeginCapture().ok());
  gpu->SampleTokens(batch.x, batch.d, batch.out);
  auto graph = gpu->EndCapture();
  ASSERT_TRUE(graph.ok()) << graph.status();
  for (int step = 0; step < 3; ++step) {
    if (step > 0) draws = next_draws();
    const std::vector<int32_t> want = step == 0 ? eager : batch.Run(*gpu, draws);
    gpu->Upload(draws.data(), batch.d);
    ASSERT_TRUE((*graph)->Replay().ok());
    std::vector<int32_t> replayed(kRows);
    ASSERT_TRUE(gpu->Download(batch.out, replayed.data()).ok());
    EXPECT_EQ(replayed, want) << "step " << step;
  }
}

// Seeded sampled generation on the bundled model.
TEST(CudaSamplingCheck, SeededGenerationOnTheBundledModel) {
  const nlohmann::json golden = ReadJson(kGoldens + "bundled/expected.json")["greedy"];
  const std::vector<int32_t> prompt = golden["prompt_ids"].get<std::vector<int32_t>>();
  SamplingParams params;
  params.temperature = 0.8f;
  params.top_k = 50;
  params.top_p = 0.95f;
  params.min_p = 0.01f;
  params.seed = 2026;
  params.max_new_tokens = 24;
  params.ignore_eos = true;

  // (a) The model's decode steps on CUDA, graphs on: each step once with the device draw and once
  // downloading its logits (the second rewrites the same cache rows): the device's token must be the
  // host pipeline's on those logits.
  auto gpu = Make("cuda");
  ASSERT_NE(gpu, nullptr);
  auto config = LoadModelConfig(kModel);
  ASSERT_TRUE(config.ok()) << config.status();
  auto model = DsaModel::Load(kModel, *config, gpu.get());
  ASSERT_TRUE(model.ok()) << model.status();
  auto cache = PagedKvCache::Create(gpu.get(), (*model)->CacheSpec(16), size_t{64} << 20);
  ASSERT_TRUE(cache.ok()) << cache.status();
  const int32_t vocab = config->vocab_size;
  const int32_t n = static_cast<int32_t>(prompt.size());
  ASSERT_TRUE((*cache)->Reserve(1, n + params.max_new_tokens).ok());
  auto sampler = Sampler::Create(params, vocab, 0);
  ASSERT_TRUE(sampler.ok());
  SamplingPipeline host;
  std::vector<int32_t> model_tokens;
  std::vector<std::vector<float>> cuda_logits;
  std::vector<SamplingDraw> draws;
  ForwardBatch step;
  step.sequences = {1};
  for (int32_t i = 0; i < n; ++i) {
    step.token_ids.push_back(prompt[i]);
    step.positions.push_back(i);
    step.token_seq.push_back(0);
  }
  step.logit_rows = {n - 1};
  int boundary = 0;
  for (int32_t t = 0; t < params.max_new_tokens; ++t) {
    step.draws.clear();
    auto logits = (*model)->Forward(step, **cache);
    ASSERT_TRUE(logits.ok()) << logits.status();
    draws.push_back(sampler->NextDraw());
    step.draws = {draws.back()};
    auto drawn = (*model)->Forward(step, **cache);
    ASSERT_TRUE(drawn.ok()) << drawn.status();
    ASSERT_EQ(drawn->sampled.size(), 1u);
    const int32_t token = drawn->sampled[0];
    const int32_t want = HostToken(host, logits->logits, draws.back());
    if (token != want) {
      const std::vector<int32_t> nearby = TokensNearby(logits->logits, draws.back(), kBoundaryEps);
      const bool detected = std::find(nearby.begin(), nearby.end(), token) != nearby.end();
      boundary += detected ? 1 : 0;
      EXPECT_TRUE(detected) << "step " << t << ": device drew " << token << ", host " << want;
    }
    model_tokens.push_back(token);
    cuda_logits.push_back(logits->logits);
    const int32_t pos = n + t;
    step.token_ids = {token};
    step.positions = {pos};
    step.token_seq = {0};
    step.logit_rows = {0};
  }
  ASSERT_NE((*model)->decode_graphs(), nullptr);
  EXPECT_GT((*model)->decode_graphs()->replays(), 0) << "the decode steps should have replayed graphs";

  // (b) The engines: CUDA's must draw the model-level tokens; CPU's are compared with them.
  auto generate = [&](const char* device) {
    EngineOptions o;
    o.model_dir = kModel;
    o.device = device;
    o.kv_cache_bytes = size_t{64} << 20;
    auto engine = Engine::Create(o);
    EXPECT_TRUE(engine.ok()) << engine.status();
    std::vector<int32_t> tokens;
    if (!engine.ok()) return std::make_pair(std::unique_ptr<Engine>(), tokens);
    auto id = (*engine)->Submit(prompt, params);
    EXPECT_TRUE(id.ok()) << id.status();
    while ((*engine)->HasWork()) {
      auto events = (*engine)->Step();
      EXPECT_TRUE(events.ok()) << events.status();
      if (!events.ok()) break;
      for (const TokenEvent& e : *events) {
        if (e.token >= 0) tokens.push_back(e.token);
      }
    }
    return std::make_pair(std::move(*engine), tokens);
  };
  auto [cuda_engine, cuda_tokens] = generate("cuda");
  auto [cpu_engine, cpu_tokens] = generate("cpu");
  ASSERT_NE(cpu_engine, nullptr);
  EXPECT_EQ(cuda_tokens, model_tokens) << "the CUDA engine and the CUDA model's decode steps disagree";
  auto print = [](const char* name, const std::vector<int32_t>& ids) {
    std::printf("sampling check: %-5s", name);
    for (int32_t id : ids) std::printf(" %d", id);
    std::printf("\n");
  };
  print("cuda", cuda_tokens);
  print("cpu", cpu_tokens);
  std::printf("sampling check: model-level boundary draws %d; seeded generation cpu == cuda: %s\n", boundary,
              cpu_tokens == cuda_tokens ? "yes" : "no");
  // The CPU engine's own tokens are its host replay's (tests/engine_test.cc asserts the same on CPU).
  const ReplayOutcome cpu_replay = ReplaySampler(*cpu_engine, prompt, params, cpu_tokens);
  EXPECT_EQ(cpu_replay.wrong, 0);
  if (cpu_tokens == cuda_tokens) return;
  // Where they part, the same draw picks differently from the two backends' logits for the same prefix.
  size_t d = 0;
  while (d < cpu_tokens.size() && d < cuda_tokens.size() && cpu_tokens[d] == cuda_tokens[d]) ++d;
  ASSERT_LT(d, cuda_tokens.size());
  const std::vector<int32_t> prefix(cuda_tokens.begin(), cuda_tokens.begin() + d + 1);
  const std::vector<float> cpu_row = ScoredLogits(*cpu_engine, prompt, prefix)[d];
  const std::vector<float>& cuda_row = cuda_logits[d];
  double worst = 0.0;
  for (int32_t j = 0; j < vocab; ++j) worst = std::max(worst, std::fabs(double{cpu_row[j]} - cuda_row[j]));
  const int32_t from_cpu = HostToken(host, cpu_row, draws[d]), from_cuda = HostToken(host, cuda_row, draws[d]);
  std::printf("sampling check: they part at token %zu (u = %.9f): the host pipeline draws %d from the CPU "
              "backend's logits and %d from CUDA's for the same prefix; those logits differ by up to %.4g "
              "(bf16 weights and activations on CUDA); token %d: cpu logit %.6f cuda %.6f, token %d: cpu %.6f "
              "cuda %.6f\n",
              d, SamplingPipeline::Uniform(draws[d].uniform_bits), from_cpu, from_cuda, worst, cpu_tokens[d],
              cpu_row[cpu_tokens[d]], cuda_row[cpu_tokens[d]], cuda_tokens[d], cpu_row[cuda_tokens[d]],
              cuda_row[cuda_tokens[d]]);
  EXPECT_EQ(from_cuda, cuda_tokens[d]) << "CUDA's token is not what its own logits give with this draw";
  EXPECT_NE(from_cpu, from_cuda) << "the divergence is not explained by the logits";
}

}  // namespace
}  // namespace indexcache
