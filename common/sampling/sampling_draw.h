// One row's input to the sampling pipeline (common/sampling/sampler.h) in the packed form a backend
// op reads from device memory: the request's parameters and the draw its Sampler made on the host.
// Plain C++17 so that the CUDA kernels (cuda_sampling.cu) read the same definition.
#pragma once

#include <cstdint>

namespace indexcache {

struct SamplingDraw {
  float temperature = 0.0f;  // 0: greedy (argmax), uniform_bits unused
  int32_t top_k = 0;         // 0: off
  float top_p = 1.0f;        // 1: off
  float min_p = 0.0f;        // 0: off
  // The uniform u = uniform_bits · 2^-53 in [0, 1): the top 53 bits of one std::mt19937_64 output,
  // carried as the integer so that host and device see exactly the same u.
  uint64_t uniform_bits = 0;
};

// Backend::SampleTokens reads its rows as I32 [n, kSamplingDrawWords] tensors holding SamplingDraws
// byte for byte.
constexpr int kSamplingDrawWords = 6;
static_assert(sizeof(SamplingDraw) == kSamplingDrawWords * sizeof(int32_t), "SamplingDraw must pack into 6 words");

}  // namespace indexcache
