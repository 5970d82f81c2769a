// Memory that received handoff rows land in: one area, made once at start, of AllocateHost memory
// (page-locked on CUDA) for transports that receive on the host, or of device memory (Allocate) for
// one that receives straight onto the GPU (NCCL), from which each rows chunk takes a range for the transport to read its
// payload into; the import then copies the rows to the device from where they landed, and the range
// comes back when that copy is done (its LandedRows' keep is dropped). What is held at once is bounded
// by the area: a Take that does not fit waits for ranges to come back, which on TCP turns into
// backpressure on the sender instead of memory.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <map>
#include <memory>
#include <mutex>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/backend/backend.h"
#include "common/kv/landed_rows.h"

namespace indexcache {

class LandingArea : public std::enable_shared_from_this<LandingArea> {
 public:
  // An area of `capacity_bytes` of `memory` from `backend`, which must outlive the pool and every
  // range taken.
  static absl::StatusOr<std::shared_ptr<LandingArea>> Create(Backend& backend, size_t capacity_bytes,
                                                             RowsMemory memory = RowsMemory::kHost);

  // A range of `bytes`, returned to the pool when the last copy of its keep is gone (any thread).
  // Waits while the pool is too full; DEADLINE_EXCEEDED past `deadline`, RESOURCE_EXHAUSTED when
  // `bytes` exceeds the whole area.
  absl::StatusOr<LandedRows> Take(size_t bytes, absl::Time deadline);

  size_t capacity() const { return capacity_; }
  RowsMemory memory() const { return memory_; }
  // Bytes taken and not yet returned.
  size_t in_use() const;

 private:
  LandingArea(HostBuffer host, Buffer device);
  void Return(size_t offset, size_t bytes);

  // One of the two holds the area.
  HostBuffer host_;
  Buffer device_;
  char* const base_;
  const size_t capacity_;
  const RowsMemory memory_;
  mutable std::mutex mu_;
  std::condition_variable returned_;
  std::map<size_t, size_t> free_;  // guarded by mu_: offset → length of each free range, coalesced
  size_t in_use_ = 0;              // guarded by mu_
};

}  // namespace indexcache
