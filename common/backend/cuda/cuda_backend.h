// The CUDA backend: bf16 weights in device memory, F32 activations and caches, every matrix product on
// tensor cores with bf16 operands and fp32 accumulation (activations are rounded to bf16 only as a
// product's input). cuBLAS runs the dense projections; our own kernels run the lightning indexer
// (cuda_indexer.cu), the radix top-k (cuda_topk.cu), sparse MLA attention (cuda_sparse_mla.cu), the
// MoE router and grouped experts (cuda_moe.cu) and the small row-wise ops (cuda_dense_ops.cu).
//
// Every op is enqueued on the backend's one stream and returns at once; only Download and
// Synchronize wait. Uploads go through pinned staging memory (cuda_host_staging.h), so they do not
// wait either. The stream can be captured into a CUDA graph (cuda_graph.h) and replayed. Ops return void (the Backend interface), so an op that meets input it cannot run
// records the first such error and Download/Synchronize report it — no op ever crashes the process.
#pragma once

#include <array>
#include <mutex>
#include <string>
#include <vector>

#include "common/backend/backend.h"
#include "common/backend/cuda/cuda_host_staging.h"
#include "common/backend/cuda/cuda_release_after.h"

typedef struct CUstream_st* cudaStream_t;
typedef struct CUevent_st* cudaEvent_t;
typedef struct cublasContext* cublasHandle_t;

namespace indexcache {

class CudaBackend final : public Backend {
 public:
  // Opens `device_index` and its stream and cuBLAS handle.
  static absl::StatusOr<std::unique_ptr<CudaBackend>> Create(int device_index = 0);
  ~CudaBackend() override;

  std::string_view name() const override { return "cuda"; }
  DType weight_dtype() const override { return DType::kBF16; }
  DType activation_dtype() const override { return DType::kBF16; }
  int cuda_device() const override { return device_; }

  absl::StatusOr<Buffer> Allocate(size_t bytes) override;
  void Free(void* data) override;
  void Upload(const void* host, Tensor dst) override;
  absl::Status Download(Tensor src, void* host) override;
  absl::StatusOr<HostBuffer> AllocateHost(size_t bytes) override;
  void FreeHost(void* data) override;
  absl::StatusOr<std::unique_ptr<AsyncHostCopy>> DownloadRowsAsync(Tensor src, absl::Span<const RowRun> runs,
                                                                   char* host) override;
  void UploadRows(const char* host, absl::Span<const RowRun> runs, Tensor dst,
                  std::shared_ptr<const void> keep) override;
  void DownloadInOrder(Tensor src, char* host) override;
  absl::Status Synchronize() override;
  void Fill(Tensor dst, float value) override;

  void Embedding(Tensor table, Tensor ids, Tensor out) override;
  void Linear(Tensor x, Tensor w, Tensor out) override { Gemm(x, w, out, 0.0f); }
  void LinearAdd(Tensor x, Tensor w, Tensor out) override { Gemm(x, w, out, 1.0f); }
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

  bool SupportsCapture() const override { return true; }
  absl::Status BeginCapture() override;
  absl::StatusOr<std::unique_ptr<CapturedOps>> EndCapture() override;
  uint64_t scratch_epoch() const override { return scratch_epoch_; }

  cudaStream_t stream() const { return stream_; }
  cublasHandle_t cublas() const { return cublas_; }
  // The first error an op recorded (OK when none); Download and Synchronize return it too.
  absl::Status sticky_status() const;

 private:
  // Scratch areas the ops reuse between calls; each grows (never shrinks) to the largest request.
  enum class Scratch : uint8_t { kCastA = 0, kIndexerLogits, kAttention, kRouterLogits, kMoe, kCount };

  CudaBackend() = default;
  // out = x · wᵀ + beta · out on cuBLAS (bf16 weights: x cast to bf16 first when it is f32).
  void Gemm(Tensor x, Tensor w, Tensor out, float beta);
  // Upload's copy: `bytes` dense rows of dst's dtype at `host`, through the pinned ring when small.
  void CopyIn(const void* host, Tensor dst);
  // Records `status` as the sticky error if none is recorded yet; returns whether it was OK.
  bool Check(const absl::Status& status);
  bool CheckCuda(int cuda_error, const char* what);
  // A device area of at least `bytes` for `which`; null (and the sticky error set) on failure.
  void* ScratchSpace(Scratch which, size_t bytes);
  // Rounds the F32 rows of `x` to bf16 in the kCastA scratch (dense, `x.cols` apart).
  void* CastToBf16(Tensor x);
  void RecordRegionEvent(TimedRegion region);
  // Records why something that may not happen while capturing was asked for; false when capturing.
  bool NotCapturing(const char* what);

  int device_ = 0;
  cudaStream_t stream_ = nullptr;
  // DownloadRowsAsync's copies: they wait for the compute stream's work before them, never the reverse.
  cudaStream_t copy_stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
  int32_t* moe_offsets_host_ = nullptr;  // pinned: MoE bucket offsets of large batches (cuda_moe.cu)
  std::array<void*, static_cast<size_t>(Scratch::kCount)> scratch_{};
  std::array<size_t, static_cast<size_t>(Scratch::kCount)> scratch_bytes_{};
  uint64_t scratch_epoch_ = 0;  // bumped whenever a scratch area is reallocated
  void* cublas_workspace_ = nullptr;
  cuda::HostStaging staging_;
  cuda::ReleaseAfter release_after_;  // UploadRows' `keep`s
  bool capturing_ = false;
  absl::Status capture_status_;  // what went wrong during the current capture (reported by EndCapture)

  mutable std::mutex status_mu_;
  absl::Status status_;

  static constexpr size_t kRegions = static_cast<size_t>(TimedRegion::kCount);
  // Per region: events of regions begun and ended since the last Take (start, end pairs).
  std::array<std::vector<cudaEvent_t>, kRegions> region_events_;
  std::vector<cudaEvent_t> free_events_;
};

}  // namespace indexcache
