// Test material for Backend::SampleTokens, shared by its CPU test (tests/backend/sample_tokens_test.cc)
// and its GPU check (tools/gpu/cuda_sampling_check.cc):
//  - MakeSamplingCases: logits rows of many kinds (ties, NaN/-inf, +inf, -0/+0, peaked, flat, nothing
//    usable) with parameter mixes that include every filter's edges (top_k >= vocab, top_p = 1,
//    min_p = 1, greedy);
//  - NearBoundary: whether a draw lies within float rounding of a boundary of the host pipeline,
//    found by moving u, top_p and min_p by a relative eps and watching the host's token change: the
//    host's cumulative mass around the draw, measured by the host pipeline itself.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "common/sampling/sampler.h"
#include "common/sampling/sampling_draw.h"
#include "common/sampling/sampling_params.h"

namespace indexcache {

struct SamplingCase {
  std::vector<float> logits;
  SamplingParams params;
  std::string kind;  // what the row is, for failure messages
};

inline std::vector<SamplingCase> MakeSamplingCases(int32_t vocab, int count, uint64_t seed) {
  constexpr float kInf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> unit(0.0f, 1.0f);
  auto pick = [&](auto const& options) { return options[rng() % options.size()]; };
  const std::vector<float> temperatures = {0.0f, 0.3f, 0.7f, 1.0f, 1.0f, 1.7f};
  const std::vector<int32_t> top_ks = {0, 0, 1, 5, 50, 1000, vocab, vocab + 7};
  const std::vector<float> top_ps = {1.0f, 1.0f, 0.95f, 0.8f, 0.5f, 1e-3f};
  const std::vector<float> min_ps = {0.0f, 0.0f, 0.02f, 0.3f, 1.0f};
  std::vector<SamplingCase> cases;
  for (int c = 0; c < count; ++c) {
    SamplingCase s;
    s.logits.resize(vocab);
    const int kind = c % 10;
    for (float& x : s.logits) x = 3.0f * normal(rng);
    switch (kind) {
      case 0:
        s.kind = "gaussian";
        break;
      case 1:
        s.kind = "quantized (many ties)";
        for (float& x : s.logits) x = std::round(x * 2.0f) / 2.0f;
        break;
      case 2:
        s.kind = "NaN and -inf sprinkled";
        for (float& x : s.logits) {
          const float r = unit(rng);
          if (r < 0.05f) x = nan;
          else if (r < 0.10f) x = -kInf;
        }
        break;
      case 3:
        s.kind = "one +inf";
        s.logits[rng() % vocab] = kInf;
        break;
      case 4:
        s.kind = "several +inf and NaN";
        for (int i = 0; i < 4; ++i) s.logits[rng() % vocab] = kInf;
        for (int i = 0; i < 4; ++i) s.logits[rng() % vocab] = nan;
        break;
      case 5:
        s.kind = "one usable logit";
        s.logits.assign(vocab, -kInf);
        s.logits[rng() % vocab] = normal(rng);
        break;
      case 6:
        s.kind = "nothing usable";
        for (float& x : s.logits) x = unit(rng) < 0.5f ? nan : -kInf;
        break;
      case 7:
        s.kind = "peaked";
        s.logits[rng() % vocab] = 40.0f;
        break;
      case 8:
        s.kind = "flat with a few higher (equal weights)";
        s.logits.assign(vocab, 0.0f);
        for (int i = 0; i < 3; ++i) s.logits[rng() % vocab] = 1.0f;
        break;
      default:
        s.kind = "-0 and +0 ties";
        for (float& x : s.logits) x = unit(rng) < 0.5f ? -0.0f : (unit(rng) < 0.5f ? 0.0f : -1.0f);
        break;
    }
    s.params.temperature = pick(temperatures);
    s.params.top_k = pick(top_ks);
    s.params.top_p = pick(top_ps);
    s.params.min_p = pick(min_ps);
    s.params.seed = rng();
    cases.push_back(std::move(s));
  }
  return cases;
}

// The host pipeline's token, -1 where it refuses the row.
inline int32_t HostToken(SamplingPipeline& pipeline, const std::vector<float>& logits, const SamplingDraw& draw) {
  const absl::StatusOr<int32_t> token = pipeline.Run(logits, draw);
  return token.ok() ? *token : -1;
}

// The tokens the host pipeline draws when u, top_p or min_p move by a relative `eps` (each alone).
// More than one distinct token: the draw lies within eps of a boundary of the CDF or of a filter.
inline std::vector<int32_t> TokensNearby(const std::vector<float>& logits, const SamplingDraw& draw, double eps) {
  SamplingPipeline pipeline;
  std::vector<int32_t> tokens = {HostToken(pipeline, logits, draw)};
  auto add = [&](SamplingDraw moved) {
    const int32_t t = HostToken(pipeline, logits, moved);
    if (std::find(tokens.begin(), tokens.end(), t) == tokens.end()) tokens.push_back(t);
  };
  const double step = eps * 0x1.0p53;
  for (const double sign : {-1.0, 1.0}) {
    SamplingDraw d = draw;
    const double bits = std::clamp(static_cast<double>(draw.uniform_bits) + sign * step, 0.0, 0x1.0p53 - 1.0);
    d.uniform_bits = static_cast<uint64_t>(bits);
    add(d);
    d = draw;
    d.top_p = std::min(1.0f, static_cast<float>(draw.top_p * (1.0 + sign * eps)));
    if (draw.top_p < 1.0f) add(d);
    d = draw;
    d.min_p = std::clamp(static_cast<float>(draw.min_p * (1.0 + sign * eps)), 0.0f, 1.0f);
    add(d);
  }
  return tokens;
}

}  // namespace indexcache
