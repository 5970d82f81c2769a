#include "services/router/prompt_blocks.h"

namespace indexcache {

PromptBlocks::PromptBlocks(absl::Span<const int32_t> tokens, std::function<int64_t(int64_t)> work_of)
    : tokens_(tokens), work_of_(std::move(work_of)) {}

absl::Span<const uint64_t> PromptBlocks::KeysFor(const BlockKey& seed, int32_t block_size) {
  auto [it, inserted] = keys_.try_emplace({seed, block_size});
  std::vector<uint64_t>& keys = it->second;
  if (!inserted || block_size <= 0 || tokens_.empty()) return keys;
  const size_t lookup = (tokens_.size() - 1) / static_cast<size_t>(block_size);
  keys.reserve(lookup);
  BlockKey previous = seed;
  for (size_t i = 0; i < lookup; ++i) {
    previous = PrefixCache::Chain(previous, tokens_.subspan(i * block_size, block_size));
    keys.push_back(PrefixCache::ShortKey(previous));
  }
  return keys;
}

}  // namespace indexcache
