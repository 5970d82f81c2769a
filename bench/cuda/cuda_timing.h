// What the kernel-level CUDA benchmarks (cuda_kernel_bench, cuda_sampling_bench) share: dying with a
// message on a CUDA error, and the median time of a piece of stream work measured with CUDA events.
#pragma once

#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "bench/cuda/engine_bench_util.h"

namespace indexcache::bench {

// The benchmarks are run by scripts that keep stderr: a clear last line, then a non-zero exit.
[[noreturn]] inline void Die(const std::string& what) {
  std::fprintf(stderr, "benchmark failed: %s\n", what.c_str());
  std::exit(1);
}

inline void CheckCuda(cudaError_t e, const char* what) {
  if (e != cudaSuccess) Die(std::string(what) + ": " + cudaGetErrorString(e));
}

// Median milliseconds of `reps` runs of `fn` on `stream` after `warmup` untimed ones, CUDA events.
inline double EventMs(cudaStream_t stream, int warmup, int reps, const std::function<void()>& fn) {
  for (int i = 0; i < warmup; ++i) fn();
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  std::vector<double> ms;
  for (int i = 0; i < reps; ++i) {
    cudaEventRecord(start, stream);
    fn();
    cudaEventRecord(stop, stream);
    CheckCuda(cudaEventSynchronize(stop), "timed run");
    float t = 0;
    cudaEventElapsedTime(&t, start, stop);
    ms.push_back(t);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return Median(std::move(ms));
}

// The card's device-to-device copy bandwidth (bytes read + written per second, in GB/s) over
// `bytes`-long buffers: the memory ceiling the kernels are judged against.
inline double CopyGbPerS(cudaStream_t stream, size_t bytes) {
  void *src = nullptr, *dst = nullptr;
  CheckCuda(cudaMalloc(&src, bytes), "copy source");
  CheckCuda(cudaMalloc(&dst, bytes), "copy destination");
  cudaMemsetAsync(src, 1, bytes, stream);
  const double ms = EventMs(stream, 2, 10, [&] { cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream); });
  cudaFree(src);
  cudaFree(dst);
  return 2.0 * bytes / (ms * 1e-3) / 1e9;
}

}  // namespace indexcache::bench
