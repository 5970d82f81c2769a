// Hands out fixed-size KV blocks by id from a pool whose size the memory budget fixed. All-or-nothing
// allocation, so a request that cannot get every block it needs leaves the pool untouched.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace indexcache {

class BlockAllocator {
 public:
  explicit BlockAllocator(int32_t num_blocks);

  // `count` distinct free block ids, or RESOURCE_EXHAUSTED naming how many were asked and free.
  absl::StatusOr<std::vector<int32_t>> Allocate(int32_t count);
  // Returns blocks to the pool. Freeing a block that is not allocated is a programming error that
  // would corrupt another sequence's cache, so it is refused.
  absl::Status Free(absl::Span<const int32_t> blocks);

  int32_t num_blocks() const { return static_cast<int32_t>(allocated_.size()); }
  int32_t num_free() const { return static_cast<int32_t>(free_.size()); }
  int32_t num_used() const { return num_blocks() - num_free(); }

 private:
  std::vector<int32_t> free_;    // stack: the most recently freed block is reused first
  std::vector<bool> allocated_;  // per block id
};

}  // namespace indexcache
