// Keeps host memory that queued GPU work reads (an import's received rows) alive until that work is
// done, without a host function in the stream. cudaLaunchHostFunc would do it, but it makes the stream
// wait on the host; on a GPU shared with another process's prefill (1P1D on one card), every such
// wait is one more time the GPU switches to this context. Here the stream only records an event, and
// a thread of this class waits for the events in order and drops what each one kept.
#pragma once

#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"

typedef struct CUstream_st* cudaStream_t;
typedef struct CUevent_st* cudaEvent_t;

namespace indexcache::cuda {

class ReleaseAfter {
 public:
  ReleaseAfter() = default;
  ReleaseAfter(const ReleaseAfter&) = delete;
  ReleaseAfter& operator=(const ReleaseAfter&) = delete;
  // Waits for every pending event, releasing what it kept.
  ~ReleaseAfter();

  // Releases `keep` once the work enqueued on `stream` so far has finished. On an error nothing was
  // enqueued and `keep` is still the caller's.
  absl::Status Enqueue(cudaStream_t stream, std::shared_ptr<const void>& keep);

 private:
  void Run();

  std::mutex mu_;
  std::condition_variable wake_;
  std::deque<std::pair<cudaEvent_t, std::shared_ptr<const void>>> pending_;  // oldest first; guarded by mu_
  std::vector<cudaEvent_t> free_events_;                                      // guarded by mu_
  bool stopping_ = false;                                                     // guarded by mu_
  std::thread thread_;  // started by the first Enqueue
  int device_ = 0;      // the device of the first Enqueue's thread, set for the waiting thread
};

}  // namespace indexcache::cuda
