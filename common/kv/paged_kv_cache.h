// The paged cache of a DSA model with IndexCache. Per token it holds, for every layer, the compressed
// MLA latent (kv_lora_rank normalized latent + qk_rope_head_dim roped key: the expanded K/V are never
// stored) and, for Full layers only, the lightning indexer's key (index_head_dim). Shared layers store
// no index keys — that is IndexCache's memory saving.
//
// Memory is one backend buffer carved into per-layer pools of `num_blocks · block_size` rows; a token
// at position p of a sequence lives in row block_table[p / block_size] · block_size + p % block_size of
// every pool. The same block id therefore addresses a token's latent rows and its index-key rows.
//
// Full blocks can be shared through the prefix cache (prefix_cache.h): a sequence may start with
// blocks another sequence computed, each shared block counted once per table that lists it. Release
// frees a sequence's own blocks and drops its references to shared ones; a shared block nobody holds
// stays cached, counted as free, until Reserve needs its memory. A shared block is never written: a
// sequence that starts with cached blocks writes from the first position after them, a block boundary.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/backend/backend.h"
#include "common/kv/block_allocator.h"
#include "common/kv/prefix_cache.h"

namespace indexcache {

struct KvCacheSpec {
  int32_t num_layers = 0;
  std::vector<bool> layer_has_index_keys;  // per layer: true for Full layers
  int32_t latent_dim = 0;                  // kv_lora_rank + qk_rope_head_dim
  int32_t index_key_dim = 0;               // index_head_dim
  int32_t block_size = 64;                 // tokens per block
  DType dtype = DType::kF32;               // every row's storage: the backend's activation dtype
};

using SequenceId = int64_t;

class PagedKvCache {
 public:
  // Sizes the pools to fit `memory_budget_bytes`; fails when not even one block fits.
  static absl::StatusOr<std::unique_ptr<PagedKvCache>> Create(Backend* backend, const KvCacheSpec& spec,
                                                              size_t memory_budget_bytes);

  const KvCacheSpec& spec() const { return spec_; }
  int32_t block_size() const { return spec_.block_size; }
  // [num_blocks · block_size, latent_dim]
  Tensor latent_pool(int32_t layer) const { return latent_pools_[layer]; }
  // [num_blocks · block_size, index_key_dim]; empty for Shared layers.
  Tensor index_key_pool(int32_t layer) const { return index_pools_[layer]; }

  // Makes room for positions [0, num_tokens) of `seq` (creating it if new), allocating blocks as
  // needed, evicting idle cached blocks when no free ones are left. RESOURCE_EXHAUSTED (nothing
  // changed, nothing evicted) when even that is short.
  absl::Status Reserve(SequenceId seq, int32_t num_tokens);
  // Frees the blocks `seq` owns and drops its references to shared ones; unknown ids are ignored
  // (release is idempotent).
  void Release(SequenceId seq);

  // --- the prefix cache ---------------------------------------------------------------------------
  // Starts `seq`, which must hold no blocks yet, with the cached blocks of the longest leading run of
  // `keys` (the keys of its first full blocks, PrefixCache::Chain); returns how many. `num_tokens`:
  // the tokens the sequence looks up, for the hit-rate counters.
  int32_t AttachCachedPrefix(SequenceId seq, absl::Span<const BlockKey> keys, int32_t num_tokens);
  // Makes blocks [first_block, first_block + keys.size()) of `seq`, computed and full, findable under
  // `keys`. A key cached already (another sequence computed the same prefix) leaves that block private.
  void PublishBlocks(SequenceId seq, int32_t first_block, absl::Span<const BlockKey> keys);
  int32_t num_cached_blocks() const { return prefix_cache_.num_blocks(); }   // findable
  int32_t num_idle_cached_blocks() const { return prefix_cache_.num_idle(); }  // findable, held by none
  PrefixCacheStats TakePrefixCacheStats() { return prefix_cache_.TakeStats(); }
  std::vector<BlockKey> TrackPrefixCacheChanges() { return prefix_cache_.TrackChanges(); }
  std::vector<PrefixCacheChange> TakePrefixCacheChanges() { return prefix_cache_.TakeChanges(); }
  bool Contains(SequenceId seq) const { return tables_.contains(seq); }
  // Block ids of `seq`, in position order (empty when unknown).
  const std::vector<int32_t>& BlockTable(SequenceId seq) const;

  int32_t BlocksFor(int32_t num_tokens) const { return (num_tokens + spec_.block_size - 1) / spec_.block_size; }
  int32_t num_blocks() const { return allocator_.num_blocks(); }
  // Free for a new allocation: never allocated, or cached and idle (evicted on demand).
  int32_t num_free_blocks() const { return allocator_.num_free() + prefix_cache_.num_idle(); }
  // Held by at least one sequence.
  int32_t num_used_blocks() const { return num_blocks() - num_free_blocks(); }
  size_t bytes_per_block() const { return bytes_per_block_; }
  // Index-key bytes per token that Shared layers do not store (what all-Full would add).
  size_t index_key_bytes_saved_per_token() const;

 private:
  PagedKvCache(const KvCacheSpec& spec, int32_t num_blocks, size_t bytes_per_block);

  KvCacheSpec spec_;
  BlockAllocator allocator_;
  PrefixCache prefix_cache_;
  size_t bytes_per_block_;
  Buffer storage_;
  std::vector<Tensor> latent_pools_;
  std::vector<Tensor> index_pools_;
  absl::flat_hash_map<SequenceId, std::vector<int32_t>> tables_;
};

}  // namespace indexcache
