#include "common/kv/block_allocator.h"

#include "absl/strings/str_format.h"

namespace indexcache {

BlockAllocator::BlockAllocator(int32_t num_blocks) : allocated_(num_blocks, false) {
  free_.reserve(num_blocks);
  for (int32_t id = num_blocks - 1; id >= 0; --id) free_.push_back(id);
}

absl::StatusOr<std::vector<int32_t>> BlockAllocator::Allocate(int32_t count) {
  if (count < 0) return absl::InvalidArgumentError("negative block count");
  if (count > num_free()) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "out of KV cache memory: %d blocks needed, %d of %d free", count, num_free(), num_blocks()));
  }
  // The free list's end is popped back to front, and Free pushes a table back to front, so the
  // blocks a sequence gets are ascending where they were freed together (always, in a fresh pool):
  // its positions then lie in consecutive slots that one copy writes (KvImporter).
  std::vector<int32_t> blocks(free_.rbegin(), free_.rbegin() + count);
  free_.resize(free_.size() - count);
  for (int32_t id : blocks) allocated_[id] = true;
  return blocks;
}

absl::Status BlockAllocator::Free(absl::Span<const int32_t> blocks) {
  // Validate the whole list first (a block listed twice counts as freeing a free block), so a refused
  // call changes nothing.
  std::vector<bool> seen(allocated_.size(), false);
  for (int32_t id : blocks) {
    if (id < 0 || id >= num_blocks() || !allocated_[id] || seen[id]) {
      return absl::InternalError(absl::StrFormat("freeing KV block %d that is not allocated", id));
    }
    seen[id] = true;
  }
  for (auto it = blocks.rbegin(); it != blocks.rend(); ++it) {
    allocated_[*it] = false;
    free_.push_back(*it);
  }
  return absl::OkStatus();
}

}  // namespace indexcache
