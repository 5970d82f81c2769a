#include "common/backend/cuda/cuda_graph.h"

#include <cuda_runtime.h>

#include "absl/strings/str_cat.h"

namespace indexcache::cuda {
namespace {

absl::Status CudaStatus(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return absl::OkStatus();
  cudaGetLastError();  // a failed capture is reported here, not by the next kernel launch check
  return absl::InternalError(absl::StrCat("cuda backend: ", what, ": ", cudaGetErrorString(e)));
}

}  // namespace

absl::Status CudaGraph::BeginCapture(cudaStream_t stream) {
  return CudaStatus(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), "begin graph capture");
}

absl::StatusOr<std::unique_ptr<CudaGraph>> CudaGraph::EndCapture(cudaStream_t stream) {
  cudaGraph_t graph = nullptr;
  if (absl::Status s = CudaStatus(cudaStreamEndCapture(stream, &graph), "end graph capture"); !s.ok()) {
    if (graph != nullptr) cudaGraphDestroy(graph);
    return s;
  }
  size_t nodes = 0;
  cudaGraphExec_t exec = nullptr;
  absl::Status s = CudaStatus(cudaGraphGetNodes(graph, nullptr, &nodes), "count graph nodes");
  if (s.ok()) s = CudaStatus(cudaGraphInstantiate(&exec, graph, 0), "instantiate graph");
  cudaGraphDestroy(graph);  // the executable graph keeps what it needs
  if (!s.ok()) return s;
  return std::unique_ptr<CudaGraph>(new CudaGraph(exec, stream, nodes));
}

CudaGraph::~CudaGraph() { cudaGraphExecDestroy(exec_); }

absl::Status CudaGraph::Replay() { return CudaStatus(cudaGraphLaunch(exec_, stream_), "graph launch"); }

}  // namespace indexcache::cuda
