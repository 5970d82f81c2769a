// The engine-level truth for sampled generation, shared by tests/engine_test.cc (CPU backend) and
// tools/gpu/cuda_sampling_check.cc: a Sampler seeded like the request, run on the host over the logits
// of prompt + generated tokens (scored by the engine in one pass), must reproduce every generated
// token, except where the draw lies within rounding of a boundary (TokensNearby) and the scored
// logits differ from the decode step's in the last bits.
#pragma once

#include <cstdint>
#include <vector>

#include "common/engine/engine.h"
#include "gtest/gtest.h"
#include "tests/sampling_cases.h"

namespace indexcache {

// Per generated token i, the logits row that predicted it: [generated.size()][vocab].
inline std::vector<std::vector<float>> ScoredLogits(Engine& engine, const std::vector<int32_t>& prompt,
                                                    const std::vector<int32_t>& generated) {
  std::vector<int32_t> ids = prompt;
  ids.insert(ids.end(), generated.begin(), generated.end());
  const int64_t vocab = engine.config().vocab_size;
  std::vector<std::vector<float>> rows(generated.size());
  const absl::Status s = engine.ScoreChunks(ids, /*capture_topk=*/false, [&](int32_t begin, const ForwardResult& r) {
    const int64_t count = static_cast<int64_t>(r.logits.size()) / vocab;
    for (int64_t k = 0; k < count; ++k) {
      const int64_t i = begin + k - (static_cast<int64_t>(prompt.size()) - 1);  // position p predicts token p + 1
      if (i >= 0 && i < static_cast<int64_t>(rows.size())) {
        rows[i].assign(r.logits.begin() + k * vocab, r.logits.begin() + (k + 1) * vocab);
      }
    }
    return absl::OkStatus();
  });
  EXPECT_TRUE(s.ok()) << s;
  return rows;
}

struct ReplayOutcome {
  int exact = 0;     // tokens the host replay reproduced
  int boundary = 0;  // tokens it did not, at a detected boundary (the engine's token is a nearby one)
  int wrong = 0;     // tokens it did not, away from any boundary: a failure
};

// Replays `params` (which carries a seed) over the scored logits of `generated`.
inline ReplayOutcome ReplaySampler(Engine& engine, const std::vector<int32_t>& prompt, const SamplingParams& params,
                                   const std::vector<int32_t>& generated) {
  ReplayOutcome out;
  const std::vector<std::vector<float>> rows = ScoredLogits(engine, prompt, generated);
  auto sampler = Sampler::Create(params, engine.config().vocab_size, 0);
  EXPECT_TRUE(sampler.ok()) << sampler.status();
  if (!sampler.ok()) return out;
  SamplingPipeline pipeline;
  for (size_t i = 0; i < generated.size(); ++i) {
    const SamplingDraw draw = sampler->NextDraw();
    if (HostToken(pipeline, rows[i], draw) == generated[i]) {
      ++out.exact;
      continue;
    }
    const std::vector<int32_t> nearby = TokensNearby(rows[i], draw, 1e-5);
    const bool at_boundary = std::find(nearby.begin(), nearby.end(), generated[i]) != nearby.end();
    (at_boundary ? out.boundary : out.wrong) += 1;
    EXPECT_TRUE(at_boundary) << "token " << i << ": the engine drew " << generated[i] << ", the host replay "
                             << nearby[0] << ", and no boundary lies near the draw";
  }
  return out;
}

}  // namespace indexcache
