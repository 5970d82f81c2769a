// Host memory that received handoff rows land in: one area of AllocateHost memory (page-locked on
// CUDA), made once at start, from which each rows chunk takes a range for the transport to read its
// payload into; the import then copies the rows to the device from where they landed, and the range
// comes back when that copy is done (its HostRows' keep is dropped). What is held at once is bounded
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
#include "common/kv/host_rows.h"

namespace indexcache {

class HostRowsPool : public std::enable_shared_from_this<HostRowsPool> {
 public:
  // An area of `capacity_bytes` from `backend`, which must outlive the pool and every range taken.
  static absl::StatusOr<std::shared_ptr<HostRowsPool>> Create(Backend& backend, size_t capacity_bytes);

  // A range of `bytes`, returned to the pool when the last copy of its keep is gone (any thread).
  // Waits while the pool is too full; DEADLINE_EXCEEDED past `deadline`, RESOURCE_EXHAUSTED when
  // `bytes` exceeds the whole area.
  absl::StatusOr<HostRows> Take(size_t bytes, absl::Time deadline);

  size_t capacity() const { return area_.bytes(); }
  // Bytes taken and not yet returned.
  size_t in_use() const;

 private:
  explicit HostRowsPool(HostBuffer area);
  void Return(size_t offset, size_t bytes);

  HostBuffer area_;
  mutable std::mutex mu_;
  std::condition_variable returned_;
  std::map<size_t, size_t> free_;  // guarded by mu_: offset → length of each free range, coalesced
  size_t in_use_ = 0;              // guarded by mu_
};

}  // namespace indexcache
