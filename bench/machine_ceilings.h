// The machine's own ceilings, measured in the same process (same threads, same OMP_WAIT_POLICY) as
// the engine numbers they are compared with: the BLAS's sgemm rate at shapes the model uses, a large
// memory copy (DRAM-sized and L3-sized), and the cost of one OpenMP fork/join (the floor of every parallel op of the
// engine).
#pragma once

#include <string>
#include <vector>

#include "bench/timing.h"

namespace indexcache::bench {

// out[m, n] = x[m, k] · w[n, k]ᵀ, the layout of Backend::Linear.
struct GemmShape {
  std::string label;
  int m = 0, n = 0, k = 0;
};

struct GemmRate {
  GemmShape shape;
  Sample sample;        // seconds per call
  double gflops = 0.0;  // 2·m·n·k / median
};

struct MachineCeilings {
  int threads = 0;
  std::string blas;  // OpenBLAS's build config and core name
  std::vector<GemmRate> gemms;
  double best_gemm_gflops = 0.0;  // the ceiling: the best shape's rate
  double copy_gbps = 0.0;         // memcpy of a buffer far larger than the caches, read + write bytes
  Sample copy;
  double cache_copy_gbps = 0.0;  // memcpy of 8 MiB: past the L2s, within a typical server L3
  Sample cache_copy;
  double omp_fork_join_us = 0.0;  // one empty `#pragma omp parallel`
};

// The shapes of the bundled model's projections (`hidden` in, `wide` out) for each token count, the
// indexer's score product ([chunk·heads, dim] × [context, dim]ᵀ), and a square product (square > 0).
std::vector<GemmShape> ModelGemmShapes(int hidden, int wide, const std::vector<int>& token_counts, int index_rows,
                                       int index_context, int index_dim, int square);

// `budget_seconds` bounds the time spent per shape (the repetition count adapts).
MachineCeilings MeasureCeilings(const std::vector<GemmShape>& shapes, double budget_seconds);

}  // namespace indexcache::bench
