#include "services/router/prompt_blocks.h"

namespace indexcache {

PromptBlocks::PromptBlocks(absl::Span<const int32_t> tokens, std::function<int64_t(int64_t)> work_of)
    : tokens_(tokens), work_of_(std::move(work_of)) {}

absl::Span<const uint64_t> PromptBlocks::KeysFor(const BlockKey& seed, int32_t block_size) {
  auto [it, inserted] = keys_.try_emplace({seed, block_size});
  if (inserted) it->second = PrefixCache::LookupShortKeys(seed, block_size, tokens_);
  return it->second;
}

const std::vector<uint64_t>* PromptBlocks::HashedFor(const BlockKey& seed, int32_t block_size) const {
  auto it = keys_.find({seed, block_size});
  return it == keys_.end() ? nullptr : &it->second;
}

}  // namespace indexcache
