#include "common/backend/cuda/cuda_backend.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/backend/cuda/cuda_graph.h"
#include "common/backend/cuda/cuda_kernels.h"
#include "common/safetensors/dtype.h"
#include "common/util/status_macros.h"

namespace indexcache {
namespace {

bool IsFloat(const Tensor& t) { return t.dtype == DType::kF32 || t.dtype == DType::kBF16; }

// cuBLAS's name of a float tensor's storage type.
cudaDataType_t CudaType(DType dtype) { return dtype == DType::kBF16 ? CUDA_R_16BF : CUDA_R_32F; }

// The logits of one IndexerTopK pass are [tokens, context] f32; queries are cut into chunks so that
// this area stays under 1 GiB at long context.
constexpr size_t kIndexerLogitsBudget = size_t{1} << 30;

// cuBLAS's workspace, given explicitly so that a captured GEMM never has it allocate one (the size
// cuBLAS itself defaults to on Hopper).
constexpr size_t kCublasWorkspaceBytes = size_t{32} << 20;

}  // namespace

absl::StatusOr<std::unique_ptr<CudaBackend>> CudaBackend::Create(int device_index) {
  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || count == 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "device 'cuda': no CUDA device is usable (", e == cudaSuccess ? "none found" : cudaGetErrorString(e), ")"));
  }
  if (device_index < 0 || device_index >= count) {
    return absl::InvalidArgumentError(absl::StrFormat("device 'cuda': GPU %d does not exist (%d found)", device_index, count));
  }
  std::unique_ptr<CudaBackend> backend(new CudaBackend());
  backend->device_ = device_index;
  if ((e = cudaSetDevice(device_index)) != cudaSuccess ||
      (e = cudaStreamCreateWithFlags(&backend->stream_, cudaStreamNonBlocking)) != cudaSuccess ||
      (e = cudaStreamCreateWithFlags(&backend->copy_stream_, cudaStreamNonBlocking)) != cudaSuccess) {
    return absl::InternalError(absl::StrCat("device 'cuda': ", cudaGetErrorString(e)));
  }
  if ((e = cudaMalloc(&backend->cublas_workspace_, kCublasWorkspaceBytes)) != cudaSuccess) {
    return absl::ResourceExhaustedError(absl::StrCat("device 'cuda': cuBLAS workspace: ", cudaGetErrorString(e)));
  }
  if (cublasCreate(&backend->cublas_) != CUBLAS_STATUS_SUCCESS ||
      cublasSetStream(backend->cublas_, backend->stream_) != CUBLAS_STATUS_SUCCESS ||
      cublasSetWorkspace(backend->cublas_, backend->cublas_workspace_, kCublasWorkspaceBytes) !=
          CUBLAS_STATUS_SUCCESS) {
    return absl::InternalError("device 'cuda': cuBLAS did not start");
  }
  if ((e = cudaMallocHost(&backend->moe_offsets_host_, sizeof(int32_t) * (cuda::kMaxMoeExperts + 1))) != cudaSuccess) {
    return absl::InternalError(absl::StrCat("device 'cuda': pinned host memory: ", cudaGetErrorString(e)));
  }
  return backend;
}

CudaBackend::~CudaBackend() {
  if (stream_ != nullptr) cudaStreamSynchronize(stream_);
  for (void* p : scratch_) {
    if (p != nullptr) cudaFree(p);
  }
  for (auto& events : region_events_) {
    for (cudaEvent_t ev : events) cudaEventDestroy(ev);
  }
  for (cudaEvent_t ev : free_events_) cudaEventDestroy(ev);
  if (cublas_ != nullptr) cublasDestroy(cublas_);
  if (cublas_workspace_ != nullptr) cudaFree(cublas_workspace_);
  if (stream_ != nullptr) cudaStreamDestroy(stream_);
  if (copy_stream_ != nullptr) {
    cudaStreamSynchronize(copy_stream_);
    cudaStreamDestroy(copy_stream_);
  }
  if (moe_offsets_host_ != nullptr) cudaFreeHost(moe_offsets_host_);
}

bool CudaBackend::Check(const absl::Status& status) {
  if (status.ok()) return true;
  std::lock_guard<std::mutex> lock(status_mu_);
  if (status_.ok()) status_ = status;
  return false;
}

bool CudaBackend::CheckCuda(int cuda_error, const char* what) {
  if (cuda_error == cudaSuccess) return true;
  return Check(absl::InternalError(
      absl::StrCat("cuda backend: ", what, ": ", cudaGetErrorString(static_cast<cudaError_t>(cuda_error)))));
}

absl::Status CudaBackend::sticky_status() const {
  std::lock_guard<std::mutex> lock(status_mu_);
  return status_;
}

void* CudaBackend::ScratchSpace(Scratch which, size_t bytes) {
  const size_t i = static_cast<size_t>(which);
  if (scratch_bytes_[i] >= bytes && scratch_[i] != nullptr) return scratch_[i];
  if (!NotCapturing("scratch growth")) return nullptr;
  ++scratch_epoch_;
  if (scratch_[i] != nullptr) cudaFree(scratch_[i]);  // waits for the kernels still using it
  scratch_[i] = nullptr;
  scratch_bytes_[i] = 0;
  const size_t grown = std::max<size_t>(bytes + bytes / 4, 256);
  if (!CheckCuda(cudaMalloc(&scratch_[i], grown), "scratch allocation")) return nullptr;
  scratch_bytes_[i] = grown;
  return scratch_[i];
}

void* CudaBackend::CastToBf16(Tensor x) {
  void* out = ScratchSpace(Scratch::kCastA, static_cast<size_t>(x.numel()) * 2);
  if (out == nullptr) return nullptr;
  const std::string error = cuda::CastToBf16(x, out, stream_);
  return Check(error.empty() ? absl::OkStatus() : absl::InvalidArgumentError(error)) ? out : nullptr;
}

absl::StatusOr<Buffer> CudaBackend::Allocate(size_t bytes) {
  void* data = nullptr;
  const cudaError_t e = cudaMalloc(&data, std::max<size_t>(bytes, 256));
  if (e != cudaSuccess) {
    cudaGetLastError();  // an out-of-memory error is not sticky: clear it
    return absl::ResourceExhaustedError(
        absl::StrFormat("cuda backend: cannot allocate %d bytes of GPU memory (%s)", bytes, cudaGetErrorString(e)));
  }
  return Buffer(this, data, bytes);
}

void CudaBackend::Free(void* data) { cudaFree(data); }

void CudaBackend::Upload(const void* host, Tensor dst) {
  if (dst.empty() || !NotCapturing("upload")) return;
  if (dst.dtype != DType::kBF16) return CopyIn(host, dst);
  std::vector<uint16_t> rounded(static_cast<size_t>(dst.numel()));
  const float* f = static_cast<const float*>(host);
  for (size_t i = 0; i < rounded.size(); ++i) rounded[i] = F32ToBf16(f[i]);  // round to nearest even, as torch
  CopyIn(rounded.data(), dst);
}

void CudaBackend::UploadRows(const char* host, absl::Span<const RowRun> runs, Tensor dst,
                             std::shared_ptr<const void> keep) {
  if (runs.empty() || !NotCapturing("upload rows")) return;
  const size_t elem = DTypeSize(dst.dtype);
  const size_t row_bytes = static_cast<size_t>(dst.cols) * elem;
  bool enqueued = true;
  for (const RowRun& run : runs) {
    char* to = static_cast<char*>(dst.data) + static_cast<size_t>(run.row) * dst.stride * elem;
    enqueued = CheckCuda(cudaMemcpy2DAsync(to, dst.stride * elem, host + run.host_offset, row_bytes, row_bytes,
                                           run.rows, cudaMemcpyDefault, stream_),  // host or device rows
                         "upload rows");
    if (!enqueued) break;
  }
  if (keep != nullptr && enqueued && Check(release_after_.Enqueue(stream_, keep))) return;
  // No event holds `host`: it must have been read before returning.
  CheckCuda(cudaStreamSynchronize(stream_), "upload rows");
}

void CudaBackend::DownloadInOrder(Tensor src, char* host) {
  if (src.empty() || !NotCapturing("download in order")) return;
  const size_t elem = DTypeSize(src.dtype);
  const size_t row_bytes = static_cast<size_t>(src.cols) * elem;
  CheckCuda(cudaMemcpy2DAsync(host, row_bytes, src.data, src.stride * elem, row_bytes, src.rows,
                              cudaMemcpyDeviceToHost, stream_),
            "download in order");
}

void CudaBackend::CopyIn(const void* host, Tensor dst) {
  const size_t elem = DTypeSize(dst.dtype);
  const size_t row_bytes = static_cast<size_t>(dst.cols) * elem;
  const size_t bytes = static_cast<size_t>(dst.rows) * row_bytes;
  const bool staged = bytes <= cuda::HostStaging::kMaxStagedBytes;
  const void* src = host;
  if (staged) {
    // Copied to pinned memory now, so the device copy below need not finish before this returns.
    auto area = staging_.Acquire(bytes);
    if (!Check(area.status())) return;
    std::memcpy(*area, host, bytes);
    src = *area;
  }
  if (!CheckCuda(cudaMemcpy2DAsync(dst.data, dst.stride * elem, src, row_bytes, row_bytes, dst.rows,
                                   cudaMemcpyHostToDevice, stream_),
                 "upload")) {
    return;
  }
  // Staged: the slot stays reserved until the copy is done. Unstaged (large, rare: weights at load):
  // from pageable memory, which the caller may free once this returns, so wait.
  if (staged) {
    Check(staging_.Release(stream_));
  } else {
    CheckCuda(cudaStreamSynchronize(stream_), "upload");
  }
}

absl::Status CudaBackend::Download(Tensor src, void* host) {
  if (src.empty()) return sticky_status();
  if (!NotCapturing("download")) return capture_status_;
  const size_t elem = DTypeSize(src.dtype);
  const size_t row_bytes = static_cast<size_t>(src.cols) * elem;
  // bf16 comes down as it is stored and is widened here: downloads are rare (probes, exports) and the
  // widening is exact.
  std::vector<uint16_t> bf16;
  if (src.dtype == DType::kBF16) bf16.resize(static_cast<size_t>(src.numel()));
  void* landing = src.dtype == DType::kBF16 ? static_cast<void*>(bf16.data()) : host;
  if (CheckCuda(cudaMemcpy2DAsync(landing, row_bytes, src.data, src.stride * elem, row_bytes, src.rows,
                                  cudaMemcpyDeviceToHost, stream_),
                "download") &&
      CheckCuda(cudaStreamSynchronize(stream_), "download")) {
    float* out = static_cast<float*>(host);
    for (size_t i = 0; i < bf16.size(); ++i) out[i] = Bf16ToF32(bf16[i]);
  }
  return sticky_status();
}

absl::StatusOr<HostBuffer> CudaBackend::AllocateHost(size_t bytes) {
  void* data = nullptr;
  const cudaError_t e = cudaMallocHost(&data, std::max<size_t>(bytes, 1));
  if (e != cudaSuccess) {
    cudaGetLastError();
    return absl::ResourceExhaustedError(
        absl::StrFormat("cuda backend: cannot allocate %d bytes of pinned host memory (%s)", bytes, cudaGetErrorString(e)));
  }
  return HostBuffer(this, data, bytes);
}

void CudaBackend::FreeHost(void* data) { cudaFreeHost(data); }

namespace {

// A copy on the copy stream, finished when `done` has fired.
class StreamCopy final : public AsyncHostCopy {
 public:
  StreamCopy(int device, cudaEvent_t done) : device_(device), done_(done) {}
  ~StreamCopy() override {
    cudaEventSynchronize(done_);  // the host area may be reused once this is gone
    cudaEventDestroy(done_);
  }
  absl::Status Wait() override {
    cudaSetDevice(device_);  // the caller may be a thread that never used this GPU
    const cudaError_t e = cudaEventSynchronize(done_);
    if (e != cudaSuccess) return absl::InternalError(absl::StrCat("cuda backend: copy to host: ", cudaGetErrorString(e)));
    return absl::OkStatus();
  }

 private:
  const int device_;
  const cudaEvent_t done_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<AsyncHostCopy>> CudaBackend::DownloadRowsAsync(Tensor src,
                                                                              absl::Span<const RowRun> runs,
                                                                              char* host) {
  if (!NotCapturing("copy to host")) return capture_status_;
  RETURN_IF_ERROR(sticky_status());
  const size_t elem = DTypeSize(src.dtype);
  const size_t row_bytes = static_cast<size_t>(src.cols) * elem;
  cudaEvent_t ready = nullptr, done = nullptr;
  if (!CheckCuda(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming), "copy to host") ||
      !CheckCuda(cudaEventCreateWithFlags(&done, cudaEventDisableTiming), "copy to host")) {
    if (ready != nullptr) cudaEventDestroy(ready);
    return sticky_status();
  }
  // The copy stream waits for what the compute stream has enqueued so far (the rows' writes), and
  // nothing on the compute stream waits for the copy.
  bool enqueued = CheckCuda(cudaEventRecord(ready, stream_), "copy to host") &&
                  CheckCuda(cudaStreamWaitEvent(copy_stream_, ready, 0), "copy to host");
  for (size_t i = 0; enqueued && i < runs.size(); ++i) {
    const char* from = static_cast<const char*>(src.data) + static_cast<size_t>(runs[i].row) * src.stride * elem;
    enqueued = CheckCuda(cudaMemcpy2DAsync(host + runs[i].host_offset, row_bytes, from, src.stride * elem, row_bytes,
                                           runs[i].rows, cudaMemcpyDefault, copy_stream_),  // to host or device
                         "copy to host");
  }
  enqueued = enqueued && CheckCuda(cudaEventRecord(done, copy_stream_), "copy to host");
  cudaEventDestroy(ready);  // released once the wait on it is satisfied
  if (!enqueued) {
    cudaEventDestroy(done);
    return sticky_status();
  }
  return std::make_unique<StreamCopy>(device_, done);
}

absl::Status CudaBackend::Synchronize() {
  if (!NotCapturing("synchronize")) return capture_status_;
  CheckCuda(cudaStreamSynchronize(stream_), "synchronize");
  return sticky_status();
}

namespace {
absl::Status AsStatus(const std::string& error) {
  return error.empty() ? absl::OkStatus() : absl::InvalidArgumentError("cuda backend: " + error);
}
}  // namespace

void CudaBackend::Fill(Tensor dst, float value) { Check(AsStatus(cuda::Fill(dst, value, stream_))); }

void CudaBackend::Embedding(Tensor table, Tensor ids, Tensor out) {
  Check(AsStatus(cuda::Embedding(table, ids, out, stream_)));
}

// bf16 weights: x goes to cuBLAS as it is when bf16 (any row stride), else through one cast to a dense
// bf16 copy; out is written as its own dtype, from f32 accumulators. f32 weights (none on this backend's
// models; kept for f32 tests) multiply f32 x into f32 out: cuBLAS has no f32 · f32 → bf16 GEMM.
void CudaBackend::Gemm(Tensor x, Tensor w, Tensor out, float beta) {
  if (!IsFloat(x) || !IsFloat(out) || !IsFloat(w) || x.cols != w.cols || out.cols != w.rows || out.rows != x.rows ||
      (w.dtype == DType::kF32 && (x.dtype != DType::kF32 || out.dtype != DType::kF32))) {
    Check(absl::InvalidArgumentError(absl::StrCat("cuda backend: linear ", x.DebugString(), " · ", w.DebugString(),
                                                  "ᵀ → ", out.DebugString())));
    return;
  }
  if (x.rows == 0 || w.rows == 0) return;
  const float alpha = 1.0f;
  const int m = static_cast<int>(w.rows), n = static_cast<int>(x.rows), k = static_cast<int>(x.cols);
  cublasStatus_t s;
  if (w.dtype == DType::kBF16) {
    const void* xb = x.data;
    int ldx = static_cast<int>(x.stride);
    if (x.dtype == DType::kF32) {
      xb = CastToBf16(x);
      ldx = k;
      if (xb == nullptr) return;
    }
    s = cublasGemmEx(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &alpha, w.data, CUDA_R_16BF, static_cast<int>(w.stride),
                     xb, CUDA_R_16BF, ldx, &beta, out.data, CudaType(out.dtype), static_cast<int>(out.stride),
                     CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  } else {
    s = cublasGemmEx(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &alpha, w.data, CUDA_R_32F, static_cast<int>(w.stride),
                     x.data, CUDA_R_32F, static_cast<int>(x.stride), &beta, out.data, CUDA_R_32F,
                     static_cast<int>(out.stride), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  }
  if (s != CUBLAS_STATUS_SUCCESS) Check(absl::InternalError(absl::StrCat("cuda backend: cuBLAS GEMM failed (", s, ")")));
}

// Head h's input columns start h·in into each row of x: with bf16 x that is cuBLAS's batch stride over x
// as it is (a column slice like q_nope keeps its row stride as ldb); f32 x is cast to a dense copy first.
void CudaBackend::HeadwiseLinear(Tensor x, Tensor w, int32_t heads, Tensor out) {
  if (heads <= 0 || x.cols % heads != 0 || out.cols % heads != 0 || w.cols != x.cols / heads ||
      w.rows != out.cols || !IsFloat(x) || !IsFloat(out) || w.dtype != DType::kBF16 || out.rows != x.rows) {
    Check(absl::InvalidArgumentError(absl::StrCat("cuda backend: headwise linear over ", heads, " heads: ",
                                                  x.DebugString(), " · ", w.DebugString(), " → ", out.DebugString())));
    return;
  }
  if (x.rows == 0) return;
  const void* xb = x.data;
  int ldx = static_cast<int>(x.stride);
  if (x.dtype == DType::kF32) {
    xb = CastToBf16(x);
    ldx = static_cast<int>(x.cols);
    if (xb == nullptr) return;
  }
  const int64_t in = x.cols / heads, o = out.cols / heads;
  const float alpha = 1.0f, beta = 0.0f;
  const cublasStatus_t s = cublasGemmStridedBatchedEx(
      cublas_, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(o), static_cast<int>(x.rows), static_cast<int>(in), &alpha,
      w.data, CUDA_R_16BF, static_cast<int>(w.stride), o * w.stride, xb, CUDA_R_16BF, ldx, in, &beta, out.data,
      CudaType(out.dtype), static_cast<int>(out.stride), o, heads, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  if (s != CUBLAS_STATUS_SUCCESS) {
    Check(absl::InternalError(absl::StrCat("cuda backend: cuBLAS batched GEMM failed (", s, ")")));
  }
}

void CudaBackend::RmsNorm(Tensor x, Tensor weight, float eps, Tensor out) {
  Check(AsStatus(cuda::RmsNorm(x, weight, eps, out, stream_)));
}

void CudaBackend::LayerNorm(Tensor x, Tensor weight, Tensor bias, float eps, Tensor out) {
  Check(AsStatus(cuda::LayerNorm(x, weight, bias, eps, out, stream_)));
}

void CudaBackend::RopeInterleaved(Tensor x, int32_t heads, int32_t head_stride, int32_t rope_offset, int32_t rope_dim,
                                  float theta, Tensor token_pos) {
  Check(AsStatus(cuda::RopeInterleaved(x, heads, head_stride, rope_offset, rope_dim, theta, token_pos, stream_)));
}

void CudaBackend::SiluMul(Tensor gate_up, Tensor out) { Check(AsStatus(cuda::SiluMul(gate_up, out, stream_))); }

void CudaBackend::Add(Tensor x, Tensor y) { Check(AsStatus(cuda::Add(x, y, stream_))); }

void CudaBackend::GatherRows(Tensor src, Tensor row_ids, Tensor dst) {
  Check(AsStatus(cuda::GatherRows(src, row_ids, dst, stream_)));
}

void CudaBackend::ArgMax(Tensor x, Tensor out) { Check(AsStatus(cuda::ArgMax(x, out, stream_))); }
void CudaBackend::SampleTokens(Tensor x, Tensor draws, Tensor out) {
  Check(AsStatus(cuda::SampleTokens(x, draws, out, stream_)));
}

void CudaBackend::WriteCacheRows(Tensor src, Tensor slot_mapping, Tensor pool) {
  Check(AsStatus(cuda::WriteCacheRows(src, slot_mapping, pool, stream_)));
}

namespace {
// The kernels index the batch's per-token columns densely.
bool DenseLayout(const BatchLayout& batch, int64_t n) {
  return batch.token_seq.dtype == DType::kI32 && batch.token_pos.dtype == DType::kI32 &&
         batch.block_tables.dtype == DType::kI32 && batch.token_seq.rows == n && batch.token_pos.rows == n &&
         (n <= 1 || (batch.token_seq.stride == 1 && batch.token_pos.stride == 1)) && batch.block_size > 0;
}
}  // namespace

void CudaBackend::IndexerTopK(Tensor q, Tensor head_weights, int32_t heads, Tensor key_pool, const BatchLayout& batch,
                              float scale, Tensor out) {
  const int64_t n = q.rows;
  if (!DenseLayout(batch, n) || out.rows != n || batch.max_context <= 0) {
    Check(absl::InvalidArgumentError("cuda backend: indexer batch layout is not one dense i32 column per token"));
    return;
  }
  if (n == 0) return;
  const int64_t context = batch.max_context;
  const int64_t chunk = std::clamp<int64_t>(static_cast<int64_t>(kIndexerLogitsBudget / (context * sizeof(float))), 1, n);
  void* area = ScratchSpace(Scratch::kIndexerLogits, static_cast<size_t>(chunk * context) * sizeof(float));
  if (area == nullptr) return;
  cuda::PagedRows rows = cuda::PagedRowsOf(batch);
  for (int64_t t0 = 0; t0 < n; t0 += chunk) {
    const int64_t count = std::min(chunk, n - t0);
    Tensor logits = Tensor::Matrix(area, DType::kF32, count, context);
    cuda::PagedRows part = rows;
    part.token_seq += t0;
    part.token_pos += t0;
    if (!Check(AsStatus(cuda::IndexerLogits(q.Rows(t0, count), head_weights.Rows(t0, count), heads, key_pool, part,
                                            static_cast<int32_t>(context), scale, logits, stream_)))) {
      return;
    }
    if (!Check(AsStatus(cuda::RowTopK(logits, part.token_pos, out.Rows(t0, count), stream_)))) return;
  }
}

void CudaBackend::SparseMlaAttention(Tensor q_latent, Tensor q_rope, int32_t heads, Tensor latent_pool,
                                     const BatchLayout& batch, Tensor indices, float scale, Tensor out) {
  if (!DenseLayout(batch, q_latent.rows) || heads <= 0) {
    Check(absl::InvalidArgumentError("cuda backend: attention batch layout is not one dense i32 column per token"));
    return;
  }
  if (q_latent.rows == 0) return;
  const size_t bytes = cuda::SparseMlaScratchBytes(q_latent.rows, heads, q_latent.cols / heads, indices.cols);
  void* scratch = bytes == 0 ? nullptr : ScratchSpace(Scratch::kAttention, bytes);
  if (bytes != 0 && scratch == nullptr) return;
  Check(AsStatus(cuda::SparseMlaAttention(q_latent, q_rope, heads, latent_pool, cuda::PagedRowsOf(batch), indices,
                                          scale, out, scratch, stream_)));
}

void CudaBackend::MoeRoute(Tensor x, Tensor gate_w, Tensor correction_bias, const MoeRouting& routing,
                           Tensor topk_ids, Tensor topk_weights) {
  if (x.rows == 0) return;
  void* area = ScratchSpace(Scratch::kRouterLogits, static_cast<size_t>(x.rows) * gate_w.rows * sizeof(float));
  if (area == nullptr) return;
  // The router logits stay f32 (sigmoid scores near a pick are close); x is f32 or bf16, as Linear takes.
  Tensor logits = Tensor::Matrix(area, DType::kF32, x.rows, gate_w.rows);
  Linear(x, gate_w, logits);
  Check(AsStatus(cuda::MoeRouteFromLogits(logits, correction_bias, routing, topk_ids, topk_weights, stream_)));
}

void CudaBackend::MoeExperts(Tensor x, Tensor gate_up, Tensor down, int32_t num_experts, Tensor topk_ids,
                             Tensor topk_weights, Tensor out, int32_t first_expert) {
  if (x.rows == 0) return;
  void* scratch =
      ScratchSpace(Scratch::kMoe, cuda::MoeScratchBytes(x.rows, topk_ids.cols, x.cols, down.cols, num_experts));
  if (scratch == nullptr) return;
  Check(AsStatus(cuda::MoeExperts(x, gate_up, down, num_experts, first_expert, topk_ids, topk_weights, out, scratch,
                                  cublas_, moe_offsets_host_, stream_)));
}

// A region is a pair of events on the stream (begin, end); both are recorded the same way.
void CudaBackend::RecordRegionEvent(TimedRegion region) {
  cudaEvent_t ev = nullptr;
  if (!free_events_.empty()) {
    ev = free_events_.back();
    free_events_.pop_back();
  } else if (!CheckCuda(cudaEventCreate(&ev), "event")) {
    return;
  }
  CheckCuda(cudaEventRecord(ev, stream_), "event record");
  region_events_[static_cast<size_t>(region)].push_back(ev);
}

// A captured region's events would be recorded only at capture time, not at each replay: unmeasured.
void CudaBackend::BeginRegion(TimedRegion region) {
  if (!capturing_) RecordRegionEvent(region);
}

void CudaBackend::EndRegion(TimedRegion region) {
  if (!capturing_) RecordRegionEvent(region);
}

double CudaBackend::TakeRegionSeconds(TimedRegion region) {
  auto& events = region_events_[static_cast<size_t>(region)];
  double seconds = 0.0;
  size_t taken = 0;
  // The events complete in stream order: the first region still running, and all after it, count
  // at a later call. Never waiting keeps the engine loop, which takes them after every step, from
  // draining the GPU between steps.
  for (; taken + 1 < events.size(); taken += 2) {
    const cudaError_t done = cudaEventQuery(events[taken + 1]);
    if (done == cudaErrorNotReady) break;
    float ms = 0.0f;
    if (CheckCuda(done, "event query") &&
        CheckCuda(cudaEventElapsedTime(&ms, events[taken], events[taken + 1]), "event time")) {
      seconds += ms * 1e-3;
    }
  }
  free_events_.insert(free_events_.end(), events.begin(), events.begin() + static_cast<std::ptrdiff_t>(taken));
  events.erase(events.begin(), events.begin() + static_cast<std::ptrdiff_t>(taken));
  return seconds;
}

bool CudaBackend::NotCapturing(const char* what) {
  if (!capturing_) return true;
  if (capture_status_.ok()) {
    capture_status_ = absl::FailedPreconditionError(absl::StrCat("cuda backend: ", what, " while capturing a graph"));
  }
  return false;
}

absl::Status CudaBackend::BeginCapture() {
  if (capturing_) return absl::FailedPreconditionError("cuda backend: a capture is already under way");
  RETURN_IF_ERROR(sticky_status());
  RETURN_IF_ERROR(cuda::CudaGraph::BeginCapture(stream_));
  capturing_ = true;
  capture_status_ = absl::OkStatus();
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<CapturedOps>> CudaBackend::EndCapture() {
  if (!capturing_) return absl::FailedPreconditionError("cuda backend: no capture is under way");
  capturing_ = false;
  auto graph = cuda::CudaGraph::EndCapture(stream_);
  RETURN_IF_ERROR(capture_status_);
  RETURN_IF_ERROR(sticky_status());  // an op that failed while recording
  if (!graph.ok()) return graph.status();
  return std::unique_ptr<CapturedOps>(std::move(*graph));
}

}  // namespace indexcache
