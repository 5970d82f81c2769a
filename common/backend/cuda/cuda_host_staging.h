// Pinned host memory that Upload copies through, so that an upload is one cudaMemcpyAsync on the
// backend's stream instead of a synchronizing copy from pageable memory. The caller's array is copied
// into a slot of a ring on the host at once (Upload's contract: the array may be reused when Upload
// returns); the device copy from that slot runs later, in stream order. An event recorded after each
// copy guards its slot: the ring wraps onto a slot only after its copy has finished.
#pragma once

#include <cstddef>
#include <deque>

#include "absl/status/statusor.h"

typedef struct CUstream_st* cudaStream_t;
typedef struct CUevent_st* cudaEvent_t;

namespace indexcache::cuda {

class HostStaging {
 public:
  // Copies up to this many bytes through the ring; larger uploads (weights at load time) are rare
  // and gain nothing from it, and would only grow the pinned area.
  static constexpr size_t kMaxStagedBytes = size_t{8} << 20;

  HostStaging() = default;
  HostStaging(const HostStaging&) = delete;
  HostStaging& operator=(const HostStaging&) = delete;
  ~HostStaging();

  // A pinned area of `bytes` (<= kMaxStagedBytes) whose previous copy has finished. The caller fills
  // it, enqueues its copy from it on `stream`, then calls Release.
  absl::StatusOr<void*> Acquire(size_t bytes);
  // Marks the area from the last Acquire as in use until the work enqueued on `stream` so far is done.
  absl::Status Release(cudaStream_t stream);

 private:
  struct InFlight {
    size_t begin, end;
    cudaEvent_t done;
  };
  // The ring holds four of the largest uploads, so steady decode rarely waits on an event.
  static constexpr size_t kRingBytes = 4 * kMaxStagedBytes;

  // Waits for the in-flight copies from [begin, end); retires every finished copy.
  absl::Status WaitFor(size_t begin, size_t end);
  // Recycles the events of the `count` oldest copies (finished).
  void Retire(size_t count);

  char* ring_ = nullptr;
  size_t head_ = 0;            // next free byte
  size_t pending_begin_ = 0;   // the area handed out by the last Acquire
  size_t pending_end_ = 0;
  std::deque<InFlight> in_flight_;  // oldest first, in ring order
  std::deque<cudaEvent_t> free_events_;
};

}  // namespace indexcache::cuda
