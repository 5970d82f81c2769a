#include "common/backend/cuda/cuda_host_staging.h"

#include <cuda_runtime.h>

#include "absl/strings/str_cat.h"

namespace indexcache::cuda {
namespace {

absl::Status CudaStatus(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat("cuda backend: upload staging: ", what, ": ", cudaGetErrorString(e)));
}

// Staging alignment: 256 bytes keeps every slot's start aligned for any copy.
size_t AlignUp(size_t bytes) { return (bytes + 255) / 256 * 256; }

}  // namespace

HostStaging::~HostStaging() {
  for (const InFlight& f : in_flight_) {
    cudaEventSynchronize(f.done);
    cudaEventDestroy(f.done);
  }
  for (cudaEvent_t e : free_events_) cudaEventDestroy(e);
  if (ring_ != nullptr) cudaFreeHost(ring_);
}

void HostStaging::Retire(size_t count) {
  for (size_t i = 0; i < count; ++i) {
    free_events_.push_back(in_flight_.front().done);
    in_flight_.pop_front();
  }
}

absl::Status HostStaging::WaitFor(size_t begin, size_t end) {
  // Every copy runs on one stream, so they finish oldest first: retire the finished front.
  size_t done = 0;
  for (; done < in_flight_.size(); ++done) {
    const cudaError_t e = cudaEventQuery(in_flight_[done].done);
    if (e == cudaErrorNotReady) {
      cudaGetLastError();  // not an error: do not let a later launch check report it
      break;
    }
    if (e != cudaSuccess) return CudaStatus(e, "event query");
  }
  // The newest copy still reading from [begin, end) is waited for; all older ones are then done too.
  for (size_t i = in_flight_.size(); i-- > done;) {
    const InFlight& f = in_flight_[i];
    if (f.begin < end && begin < f.end) {
      if (absl::Status s = CudaStatus(cudaEventSynchronize(f.done), "wait"); !s.ok()) return s;
      done = i + 1;
      break;
    }
  }
  Retire(done);
  return absl::OkStatus();
}

absl::StatusOr<void*> HostStaging::Acquire(size_t bytes) {
  if (bytes > kMaxStagedBytes) {
    return absl::InvalidArgumentError(absl::StrCat("cuda backend: cannot stage ", bytes, " bytes"));
  }
  if (ring_ == nullptr) {
    void* p = nullptr;
    if (absl::Status s = CudaStatus(cudaHostAlloc(&p, kRingBytes, cudaHostAllocDefault), "pinned allocation");
        !s.ok()) {
      return s;
    }
    ring_ = static_cast<char*>(p);
  }
  const size_t size = AlignUp(bytes);
  if (head_ + size > kRingBytes) head_ = 0;
  if (absl::Status s = WaitFor(head_, head_ + size); !s.ok()) return s;
  pending_begin_ = head_;
  pending_end_ = head_ + size;
  head_ += size;
  return ring_ + pending_begin_;
}

absl::Status HostStaging::Release(cudaStream_t stream) {
  cudaEvent_t done = nullptr;
  if (!free_events_.empty()) {
    done = free_events_.front();
    free_events_.pop_front();
  } else if (absl::Status s = CudaStatus(cudaEventCreateWithFlags(&done, cudaEventDisableTiming), "event"); !s.ok()) {
    return s;
  }
  if (absl::Status s = CudaStatus(cudaEventRecord(done, stream), "event record"); !s.ok()) {
    free_events_.push_back(done);
    return s;
  }
  in_flight_.push_back(InFlight{pending_begin_, pending_end_, done});
  return absl::OkStatus();
}

}  // namespace indexcache::cuda
