// Sampling on the GPU (Backend::SampleTokens, cuda_sampling.cu) against the path it replaces: every
// sampled row's logits downloaded and drawn on the host by Sampler (one thread, as the engine did),
// at GLM-5's vocab (154,880) × batch 1/16/64, in one process on the same device-resident logits.
//   kernel_ms: the op's kernel alone, CUDA events (median of 30);
//   op_step_ms: what a decode step pays with the op: upload the draws, run it, download the ids
//     (host clock, median of 30);
//   baseline_ms: download the logits + Sampler::Sample per row (host clock, median of 10), split into
//     download_ms and host_sample_ms;
//   floor_ms: one read of the logits at the measured device-to-device copy bandwidth (the op reads the
//     row once per pass: about 12–18 passes, see cuda_sampling.cu).
// Prints one JSON object on stdout.
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "bench/cuda/cuda_timing.h"
#include "common/backend/cuda/cuda_backend.h"
#include "common/backend/cuda/cuda_kernels.h"
#include "common/sampling/sampler.h"
#include "nlohmann/json.hpp"

namespace indexcache::bench {
namespace {

constexpr int32_t kVocab = 154880;

// Median milliseconds of `fn` (which ends synchronized), host clock.
double HostMs(int warmup, int reps, const std::function<void()>& fn) {
  for (int i = 0; i < warmup; ++i) fn();
  std::vector<double> ms;
  for (int i = 0; i < reps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  return Median(ms);
}

struct Mix {
  const char* name;
  SamplingParams params;
};

nlohmann::json Run(CudaBackend& be, const Mix& mix, int64_t rows, const std::vector<float>& host_logits,
                   double copy_gbps) {
  auto logits = be.Allocate(rows * kVocab * sizeof(float));
  auto draws = be.Allocate(rows * sizeof(SamplingDraw));
  auto ids = be.Allocate(rows * sizeof(int32_t));
  if (!logits.ok() || !draws.ok() || !ids.ok()) Die("allocation failed");
  const Tensor x = logits->View(DType::kF32, rows, kVocab);
  const Tensor d = draws->View(DType::kI32, rows, kSamplingDrawWords);
  const Tensor out = ids->View(DType::kI32, rows, 1);
  be.Upload(host_logits.data(), x);  // rows of distinct random logits
  std::vector<Sampler> samplers;
  for (int64_t r = 0; r < rows; ++r) {
    SamplingParams p = mix.params;
    p.seed = 1000 + r;
    auto s = Sampler::Create(p, kVocab, 0);
    if (!s.ok()) Die(s.status().ToString());
    samplers.push_back(*std::move(s));
  }
  std::vector<SamplingDraw> host_draws(rows);
  std::vector<int32_t> host_ids(rows);
  auto next_draws = [&] {
    for (int64_t r = 0; r < rows; ++r) host_draws[r] = samplers[r].NextDraw();
  };
  next_draws();
  be.Upload(host_draws.data(), d);
  const double kernel_ms = EventMs(be.stream(), 3, 30, [&] {
    const std::string e = cuda::SampleTokens(x, d, out, be.stream());
    if (!e.empty()) Die(e);
  });
  const double op_step_ms = HostMs(3, 30, [&] {
    next_draws();
    be.Upload(host_draws.data(), d);
    be.SampleTokens(x, d, out);
    if (!be.Download(out, host_ids.data()).ok()) Die("download of the ids failed");
  });
  std::vector<float> row_logits(rows * kVocab);
  const double download_ms = HostMs(2, 10, [&] {
    if (!be.Download(x, row_logits.data()).ok()) Die("download of the logits failed");
  });
  const double host_sample_ms = HostMs(1, 10, [&] {
    for (int64_t r = 0; r < rows; ++r) {
      auto t = samplers[r].Sample(absl::MakeConstSpan(row_logits.data() + r * kVocab, kVocab));
      if (!t.ok()) Die(t.status().ToString());
    }
  });
  const double baseline_ms = HostMs(1, 10, [&] {
    if (!be.Download(x, row_logits.data()).ok()) Die("download of the logits failed");
    for (int64_t r = 0; r < rows; ++r) {
      auto t = samplers[r].Sample(absl::MakeConstSpan(row_logits.data() + r * kVocab, kVocab));
      if (!t.ok()) Die(t.status().ToString());
    }
  });
  nlohmann::json j;
  j["mix"] = mix.name;
  j["rows"] = rows;
  j["vocab"] = kVocab;
  j["kernel_ms"] = kernel_ms;
  j["op_step_ms"] = op_step_ms;
  j["baseline_ms"] = baseline_ms;
  j["download_ms"] = download_ms;
  j["host_sample_ms"] = host_sample_ms;
  j["floor_ms"] = static_cast<double>(rows) * kVocab * sizeof(float) / (copy_gbps * 1e9) * 1e3;
  j["speedup"] = baseline_ms / op_step_ms;
  std::fprintf(stderr, "%-22s rows %3ld: kernel %.3f ms, op step %.3f ms, baseline %.3f ms (download %.3f, host %.3f)\n",
               mix.name, static_cast<long>(rows), kernel_ms, op_step_ms, baseline_ms, download_ms, host_sample_ms);
  return j;
}

}  // namespace
}  // namespace indexcache::bench

int main() {
  using namespace indexcache;
  auto be = CudaBackend::Create();
  if (!be.ok()) bench::Die(be.status().ToString());
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  nlohmann::json report;
  report["device"] = prop.name;
  const double copy_gbps = bench::CopyGbPerS((*be)->stream(), size_t{1} << 30);
  report["copy_gb_per_s"] = copy_gbps;
  // Logits like an LM head's: a Gaussian bulk (scale 3) and a few tokens well above it.
  std::mt19937_64 rng(7);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::vector<float> logits(size_t{64} * bench::kVocab);
  for (float& v : logits) v = normal(rng);
  for (int r = 0; r < 64; ++r) {
    for (int i = 0; i < 8; ++i) logits[r * size_t{bench::kVocab} + rng() % bench::kVocab] = 15.0f + normal(rng);
  }
  std::vector<bench::Mix> mixes(3);
  mixes[0].name = "T0.7 top_k50 top_p0.9";
  mixes[0].params.temperature = 0.7f;
  mixes[0].params.top_k = 50;
  mixes[0].params.top_p = 0.9f;
  mixes[1].name = "T1 top_p0.9";
  mixes[1].params.top_p = 0.9f;
  mixes[2].name = "T1 (no filter)";
  report["runs"] = nlohmann::json::array();
  for (const bench::Mix& mix : mixes) {
    for (int64_t rows : {1, 16, 64}) report["runs"].push_back(bench::Run(**be, mix, rows, logits, copy_gbps));
  }
  std::printf("%s\n", report.dump(1).c_str());
  return 0;
}
