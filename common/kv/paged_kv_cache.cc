#include "common/kv/paged_kv_cache.h"

#include <algorithm>

#include "absl/strings/str_format.h"
#include "common/util/status_macros.h"

namespace indexcache {
namespace {

size_t RowBytesPerToken(const KvCacheSpec& spec) {
  size_t elements = 0;
  for (int32_t layer = 0; layer < spec.num_layers; ++layer) {
    elements += spec.latent_dim + (spec.layer_has_index_keys[layer] ? spec.index_key_dim : 0);
  }
  return elements * DTypeSize(spec.dtype);
}

}  // namespace

PagedKvCache::PagedKvCache(const KvCacheSpec& spec, int32_t num_blocks, size_t bytes_per_block)
    : spec_(spec), allocator_(num_blocks), prefix_cache_(spec.block_size), bytes_per_block_(bytes_per_block) {}

absl::StatusOr<std::unique_ptr<PagedKvCache>> PagedKvCache::Create(Backend* backend, const KvCacheSpec& spec,
                                                                   size_t memory_budget_bytes) {
  if (spec.block_size <= 0 || spec.num_layers <= 0 ||
      static_cast<int32_t>(spec.layer_has_index_keys.size()) != spec.num_layers) {
    return absl::InvalidArgumentError("KV cache spec: block size, layer count and index-key layers disagree");
  }
  if (spec.dtype == DType::kI32) return absl::InvalidArgumentError("KV cache spec: rows are F32 or BF16, not I32");
  const size_t bytes_per_block = RowBytesPerToken(spec) * spec.block_size;
  const size_t num_blocks = memory_budget_bytes / bytes_per_block;
  if (num_blocks == 0) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "KV cache budget of %d bytes holds no block (one block of %d tokens needs %d bytes)", memory_budget_bytes,
        spec.block_size, bytes_per_block));
  }
  if (num_blocks > (size_t{1} << 30) / static_cast<size_t>(spec.block_size)) {
    return absl::InvalidArgumentError("KV cache budget too large: slot ids would overflow int32");
  }
  std::unique_ptr<PagedKvCache> cache(new PagedKvCache(spec, static_cast<int32_t>(num_blocks), bytes_per_block));
  ASSIGN_OR_RETURN(cache->storage_, backend->Allocate(num_blocks * bytes_per_block));
  const int64_t slots = static_cast<int64_t>(num_blocks) * spec.block_size;
  char* next = static_cast<char*>(cache->storage_.data());
  const size_t elem = DTypeSize(spec.dtype);
  for (int32_t layer = 0; layer < spec.num_layers; ++layer) {
    cache->latent_pools_.push_back(Tensor::Matrix(next, spec.dtype, slots, spec.latent_dim));
    next += slots * spec.latent_dim * elem;
    if (spec.layer_has_index_keys[layer]) {
      cache->index_pools_.push_back(Tensor::Matrix(next, spec.dtype, slots, spec.index_key_dim));
      next += slots * spec.index_key_dim * elem;
    } else {
      cache->index_pools_.push_back(Tensor{});
    }
  }
  return cache;
}

absl::Status PagedKvCache::Reserve(SequenceId seq, int32_t num_tokens) {
  std::vector<int32_t>& table = tables_[seq];
  const int32_t needed = BlocksFor(num_tokens) - static_cast<int32_t>(table.size());
  if (needed <= 0) return absl::OkStatus();
  const int32_t short_by = needed - allocator_.num_free();
  if (short_by > 0 && short_by <= prefix_cache_.num_idle()) {
    // Evicted blocks come straight from the cache's books, so Free cannot refuse them.
    allocator_.Free(prefix_cache_.Evict(short_by)).IgnoreError();
  }
  auto blocks = allocator_.Allocate(needed);
  if (!blocks.ok()) {
    if (table.empty()) tables_.erase(seq);
    // The allocator's count leaves out the idle cached blocks, which were too few to make up the rest.
    return Annotate(blocks.status(), absl::StrFormat("sequence %d growing to %d tokens (%d more blocks idle in the "
                                                     "prefix cache)",
                                                     seq, num_tokens, prefix_cache_.num_idle()));
  }
  table.insert(table.end(), blocks->begin(), blocks->end());
  return absl::OkStatus();
}

void PagedKvCache::Release(SequenceId seq) {
  auto it = tables_.find(seq);
  if (it == tables_.end()) return;
  // Back to front, so a sequence's later blocks turn idle first and are evicted before its earlier
  // ones, which every longer match needs (vLLM's free order, for the same reason).
  std::vector<int32_t> own;
  for (auto block = it->second.rbegin(); block != it->second.rend(); ++block) {
    if (!prefix_cache_.Drop(*block)) own.push_back(*block);
  }
  std::reverse(own.begin(), own.end());
  // The table only ever holds blocks this allocator handed out, so Free cannot fail here.
  allocator_.Free(own).IgnoreError();
  tables_.erase(it);
}

int32_t PagedKvCache::AttachCachedPrefix(SequenceId seq, absl::Span<const BlockKey> keys, int32_t num_tokens) {
  std::vector<int32_t>& table = tables_[seq];
  if (!table.empty()) return 0;
  table = prefix_cache_.Acquire(keys, num_tokens);
  const int32_t attached = static_cast<int32_t>(table.size());
  if (attached == 0) tables_.erase(seq);
  return attached;
}

void PagedKvCache::PublishBlocks(SequenceId seq, int32_t first_block, absl::Span<const BlockKey> keys) {
  const std::vector<int32_t>& table = BlockTable(seq);
  for (size_t i = 0; i < keys.size() && first_block + i < table.size(); ++i) {
    prefix_cache_.Register(keys[i], table[first_block + i]);
  }
}

const std::vector<int32_t>& PagedKvCache::BlockTable(SequenceId seq) const {
  static const std::vector<int32_t> kEmpty;
  auto it = tables_.find(seq);
  return it == tables_.end() ? kEmpty : it->second;
}

size_t PagedKvCache::index_key_bytes_saved_per_token() const {
  size_t shared = 0;
  for (bool has_keys : spec_.layer_has_index_keys) shared += !has_keys;
  return shared * spec_.index_key_dim * DTypeSize(spec_.dtype);
}

}  // namespace indexcache
