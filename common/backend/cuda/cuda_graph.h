// A CUDA graph recorded from the backend's stream (stream capture) and instantiated once, replayed
// with one cudaGraphLaunch: the decode step's hundreds of kernel and cuBLAS launches cost one launch.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "common/backend/backend.h"

typedef struct CUstream_st* cudaStream_t;
typedef struct CUgraphExec_st* cudaGraphExec_t;

namespace indexcache::cuda {

class CudaGraph final : public CapturedOps {
 public:
  // Starts recording the work enqueued on `stream` (by this thread only, so another engine's
  // thread may allocate meanwhile).
  static absl::Status BeginCapture(cudaStream_t stream);
  // Stops recording and instantiates what was recorded. Leaves `stream` out of capture mode even
  // when the recording failed.
  static absl::StatusOr<std::unique_ptr<CudaGraph>> EndCapture(cudaStream_t stream);

  CudaGraph(const CudaGraph&) = delete;
  CudaGraph& operator=(const CudaGraph&) = delete;
  ~CudaGraph() override;

  absl::Status Replay() override;
  size_t size() const override { return nodes_; }

 private:
  CudaGraph(cudaGraphExec_t exec, cudaStream_t stream, size_t nodes) : exec_(exec), stream_(stream), nodes_(nodes) {}

  cudaGraphExec_t exec_;
  cudaStream_t stream_;
  size_t nodes_;
};

}  // namespace indexcache::cuda
