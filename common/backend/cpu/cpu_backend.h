// The reference backend: F32 weights and activations in host memory, BLAS (OpenBLAS) for matrix
// products, OpenMP across tokens/heads for the rest. Ops run synchronously, so "device" pointers are
// plain host pointers and Download is a copy. Op definitions are split by family:
// cpu_dense_ops.cc (projections, norms, RoPE), cpu_dsa_ops.cc (paged cache, indexer, sparse MLA),
// cpu_moe_ops.cc (routing, experts).
#pragma once

#include <array>
#include <chrono>

#include "common/backend/backend.h"
#include "common/sampling/sampler.h"

namespace indexcache {

class CpuBackend final : public Backend {
 public:
  // num_threads <= 0: OpenMP's default (all cores).
  explicit CpuBackend(int num_threads);

  std::string_view name() const override { return "cpu"; }
  DType weight_dtype() const override { return DType::kF32; }

  absl::StatusOr<Buffer> Allocate(size_t bytes) override;
  void Free(void* data) override;
  void Upload(const void* host, Tensor dst) override;
  absl::Status Download(Tensor src, void* host) override;
  // Host memory already: a copy now, complete when it returns.
  absl::StatusOr<std::unique_ptr<AsyncHostCopy>> DownloadRowsAsync(Tensor src, absl::Span<const RowRun> runs,
                                                                   char* host) override;
  void UploadRows(const char* host, absl::Span<const RowRun> runs, Tensor dst,
                  std::shared_ptr<const void> keep) override;
  void DownloadInOrder(Tensor src, char* host) override;
  absl::Status Synchronize() override { return absl::OkStatus(); }
  void Fill(Tensor dst, float value) override;

  void Embedding(Tensor table, Tensor ids, Tensor out) override;
  void Linear(Tensor x, Tensor w, Tensor out) override;
  void LinearAdd(Tensor x, Tensor w, Tensor out) override;
  void HeadwiseLinear(Tensor x, Tensor w, int32_t heads, Tensor out) override;
  void RmsNorm(Tensor x, Tensor weight, float eps, Tensor out) override;
  void LayerNorm(Tensor x, Tensor weight, Tensor bias, float eps, Tensor out) override;
  void RopeInterleaved(Tensor x, int32_t heads, int32_t head_stride, int32_t rope_offset,
                       int32_t rope_dim, float theta, Tensor token_pos) override;
  void SiluMul(Tensor gate_up, Tensor out) override;
  void Add(Tensor x, Tensor y) override;
  void GatherRows(Tensor src, Tensor row_ids, Tensor dst) override;
  void ArgMax(Tensor x, Tensor out) override;
  void SampleTokens(Tensor x, Tensor draws, Tensor out) override;

  void WriteCacheRows(Tensor src, Tensor slot_mapping, Tensor pool) override;
  void IndexerTopK(Tensor q, Tensor head_weights, int32_t heads, Tensor key_pool,
                   const BatchLayout& batch, float scale, Tensor out) override;
  void SparseMlaAttention(Tensor q_latent, Tensor q_rope, int32_t heads, Tensor latent_pool,
                          const BatchLayout& batch, Tensor indices, float scale,
                          Tensor out) override;

  void MoeRoute(Tensor x, Tensor gate_w, Tensor correction_bias, const MoeRouting& routing,
                Tensor topk_ids, Tensor topk_weights) override;
  void MoeExperts(Tensor x, Tensor gate_up, Tensor down, int32_t num_experts, Tensor topk_ids,
                  Tensor topk_weights, Tensor out, int32_t first_expert) override;

  void BeginRegion(TimedRegion region) override;
  void EndRegion(TimedRegion region) override;
  double TakeRegionSeconds(TimedRegion region) override;

 private:
  using Clock = std::chrono::steady_clock;
  static constexpr size_t kRegions = static_cast<size_t>(TimedRegion::kCount);
  std::array<Clock::time_point, kRegions> region_start_{};
  std::array<double, kRegions> region_seconds_{};
  SamplingPipeline sampling_;  // SampleTokens' scratch, reused across steps
};

}  // namespace indexcache
