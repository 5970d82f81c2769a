#include "common/backend/cuda/cuda_release_after.h"

#include <cuda_runtime.h>

#include "absl/strings/str_cat.h"

namespace indexcache::cuda {

ReleaseAfter::~ReleaseAfter() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
  for (cudaEvent_t e : free_events_) cudaEventDestroy(e);
}

absl::Status ReleaseAfter::Enqueue(cudaStream_t stream, std::shared_ptr<const void>& keep) {
  cudaEvent_t event = nullptr;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!free_events_.empty()) {
      event = free_events_.back();
      free_events_.pop_back();
    }
  }
  // Blocking sync: the waiting thread sleeps until the event fires instead of spinning on a core.
  cudaError_t e = event != nullptr ? cudaSuccess
                                   : cudaEventCreateWithFlags(&event, cudaEventDisableTiming | cudaEventBlockingSync);
  if (e == cudaSuccess) e = cudaEventRecord(event, stream);
  if (e != cudaSuccess) {
    if (event != nullptr) cudaEventDestroy(event);
    return absl::InternalError(absl::StrCat("cuda backend: release after copies: ", cudaGetErrorString(e)));
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    pending_.emplace_back(event, std::move(keep));
    if (!thread_.joinable()) {
      cudaGetDevice(&device_);
      thread_ = std::thread([this] { Run(); });
    }
  }
  wake_.notify_one();
  return absl::OkStatus();
}

void ReleaseAfter::Run() {
  cudaSetDevice(device_);
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    wake_.wait(lock, [&] { return stopping_ || !pending_.empty(); });
    if (pending_.empty()) return;  // stopping, and nothing left to wait for
    auto [event, keep] = std::move(pending_.front());
    pending_.pop_front();
    lock.unlock();
    // An event that fails to complete (a broken context) still ends the wait; the memory then goes
    // back, as nothing will read it any more.
    cudaEventSynchronize(event);
    keep.reset();
    lock.lock();
    free_events_.push_back(event);
  }
}

}  // namespace indexcache::cuda
