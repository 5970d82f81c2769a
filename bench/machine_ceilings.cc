#include "bench/machine_ceilings.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <random>

#include "absl/strings/str_format.h"
#include "bench/memory_copy.h"

namespace indexcache::bench {
namespace {

// Random values, not zeros: zeros can run faster than real data (METHOD.md).
std::vector<float> RandomMatrix(size_t count, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> v(count);
  for (float& x : v) x = dist(rng);
  return v;
}

GemmRate MeasureGemm(const GemmShape& s, double budget_seconds) {
  const std::vector<float> x = RandomMatrix(static_cast<size_t>(s.m) * s.k, 1);
  const std::vector<float> w = RandomMatrix(static_cast<size_t>(s.n) * s.k, 2);
  std::vector<float> out(static_cast<size_t>(s.m) * s.n, 0.0f);
  auto call = [&] {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, s.m, s.n, s.k, 1.0f, x.data(), s.k, w.data(), s.k, 0.0f,
                out.data(), s.n);
  };
  GemmRate rate;
  rate.shape = s;
  // 7 repetitions, each at least budget/10 long so tiny products are timed over many calls.
  rate.sample = TimeBatched(call, /*warmup=*/2, /*reps=*/7, budget_seconds / 10.0);
  rate.gflops = 2.0 * s.m * s.n * s.k / rate.sample.median * 1e-9;
  return rate;
}

}  // namespace

std::vector<GemmShape> ModelGemmShapes(int hidden, int wide, const std::vector<int>& token_counts, int index_rows,
                                       int index_context, int index_dim, int square) {
  std::vector<GemmShape> shapes;
  for (int t : token_counts) {
    shapes.push_back({absl::StrFormat("projection [%d,%d]x[%d,%d]T", t, hidden, wide, hidden), t, wide, hidden});
  }
  shapes.push_back({absl::StrFormat("indexer scores [%d,%d]x[%d,%d]T", index_rows, index_dim, index_context, index_dim),
                    index_rows, index_context, index_dim});
  if (square > 0) shapes.push_back({absl::StrFormat("square %d^3", square), square, square, square});
  return shapes;
}

MachineCeilings MeasureCeilings(const std::vector<GemmShape>& shapes, double budget_seconds) {
  MachineCeilings m;
  m.threads = omp_get_max_threads();
  m.blas = absl::StrFormat("%s (core %s)", openblas_get_config(), openblas_get_corename());
  for (const GemmShape& s : shapes) {
    m.gemms.push_back(MeasureGemm(s, budget_seconds));
    m.best_gemm_gflops = std::max(m.best_gemm_gflops, m.gemms.back().gflops);
  }

  // 256 MiB each way: far beyond any L3 this benchmark will meet. 8 MiB each way: what a small
  // model's weights look like when they stay in L3 between decode steps.
  m.copy = TimeCopy(size_t{256} << 20, m.threads, 0.0);
  m.copy_gbps = 2.0 * (size_t{256} << 20) / m.copy.median * 1e-9;
  m.cache_copy = TimeCopy(size_t{8} << 20, m.threads, 0.05);
  m.cache_copy_gbps = 2.0 * (size_t{8} << 20) / m.cache_copy.median * 1e-9;

  auto fork_join = [] {
#pragma omp parallel
    { asm volatile("" ::: "memory"); }
  };
  m.omp_fork_join_us = TimeBatched(fork_join, /*warmup=*/100, /*reps=*/7, 0.02).median * 1e6;
  return m;
}

}  // namespace indexcache::bench
